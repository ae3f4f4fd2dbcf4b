// SPDX-License-Identifier: Apache-2.0
// What echod looks like from /proc: its RLIMIT_NOFILE and its open descriptors.
import Glibc
import Testing

extension EchodIntegration {
    @Suite struct Resources {
        /// [Limits] NoFile=N is the soft "Max open files". Two values, so that neither
        /// matching an inherited limit by chance nor a hard-coded 4096 passes.
        @Test(arguments: [4096, 1500])
        func noFileSetsTheSoftOpenFilesLimit(noFile: Int) throws {
            try withEchod(config: Echod.config(noFile: noFile)) { server in
                let limit = try openFilesLimit(pid: server.pid)
                #expect(limit.soft == noFile, "/proc/\(server.pid)/limits: \(limit)")
                #expect(limit.hard.map { $0 >= noFile } ?? true)
            }
        }

        /// 500 short connections (clean half-closes, abrupt closes, resets) leave the
        /// number of open descriptors where it was.
        @Test(arguments: servingModels)
        func descriptorCountIsUnchangedAfterManyConnections(model: String) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                try roundTrip(port: server.port)  // lazily created descriptors belong to the baseline
                let baseline = try server.settledDescriptorCount()
                let before = server.openDescriptors()
                var served = 0
                for batch in 0..<10 {
                    let plans = (0..<50).map { index -> FlowPlan in
                        let seed = UInt64(batch * 50 + index)
                        switch index % 5 {
                        case 0: return FlowPlan(bytes: 300, seed: seed, halfClose: false, abort: (written: 300, read: 0, linger0: true))
                        case 1: return FlowPlan(bytes: 300, seed: seed, halfClose: false, abort: (written: 300, read: 100, linger0: false))
                        default: return FlowPlan(bytes: 300, seed: seed)
                        }
                    }
                    let load = try EchoLoad(port: server.port, plans: plans)
                    let finished = try load.runToCompletion(timeout: .seconds(10))
                    try #require(load.failures == [] && finished, "batch \(batch): \(load.unfinishedSummary) \(load.failures)")
                    served += plans.count
                }
                #expect(served == 500)
                var after = 0
                let settled = try waitUntil(timeout: .seconds(10), interval: .milliseconds(50)) {
                    after = try server.openDescriptorCount()
                    return after == baseline
                }
                #expect(settled, "open descriptors: \(baseline) before \(before), \(after) after 500 connections \(server.openDescriptors())")
                #expect(server.child.isRunning, "\(server.describeState())")
            }
        }
    }

    @Suite struct ListenAddresses {
        /// echod binding Listen= itself (no LISTEN_FDS): one listen.address= line per
        /// listener with the real port, and each address echoes.
        @Test func ipv4AndIPv6ListenersBothEcho() throws {
            try withEchod(config: Echod.config(listen: ["127.0.0.1:0", "[::1]:0"]), activation: .listen) { server in
                let hosts = server.endpoints.map(\.host)
                #expect(Set(hosts) == [.v4, .v6], "listen.address lines: \(server.endpoints)")
                for (host, port) in server.endpoints {
                    #expect(port != 0)
                    try roundTrip(host, port: port, count: 70_000, seed: UInt64(port))
                }
            }
        }
    }
}
