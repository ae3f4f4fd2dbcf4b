// SPDX-License-Identifier: Apache-2.0
// What is particular to each concurrency model: the fork model reaps every child and leaks no
// descriptor, the thread model's threads all end, and every model's connection limit holds under
// a burst while the excess waits in the backlog and is served once slots free.
import Foundation
import Glibc
import Synchronization
import Testing

extension EchodIntegration {
    @Suite struct Models {
        /// 2000 short connections through the fork model: afterwards no child is left (zombie or
        /// alive), and the parent's descriptor count is back where it started.
        @Test func forkModelReapsEveryChildAndLeaksNoDescriptor() throws {
            try withEchod(config: Echod.config(model: "fork")) { server in
                try roundTrip(port: server.port)
                let baseline = try server.settledDescriptorCount()
                #expect(waitUntil(timeout: .seconds(5)) { childProcesses(of: server.pid).isEmpty })
                var done = 0
                for batch in 0..<20 {
                    let plans = (0..<100).map { FlowPlan(bytes: 64, seed: UInt64(batch * 100 + $0)) }
                    let load = try EchoLoad(port: server.port, plans: plans)
                    let finished = try load.runToCompletion(timeout: .seconds(20))
                    try #require(load.failures == [] && finished, "batch \(batch): \(load.unfinishedSummary)")
                    done += plans.count
                }
                #expect(done == 2000)
                var left: [(pid_t, String)] = []
                let reaped = waitUntil(timeout: .seconds(10)) {
                    left = childProcesses(of: server.pid)
                    return left.isEmpty
                }
                #expect(reaped, "children still present (pid, state): \(left)")
                var after = 0
                let settled = try waitUntil(timeout: .seconds(10), interval: .milliseconds(50)) {
                    after = try server.openDescriptorCount()
                    return after == baseline
                }
                #expect(settled, "descriptors: \(baseline) before, \(after) after: \(server.openDescriptors())")
            }
        }

        /// 2000 idle connections held at once by the thread model: 2000 more threads while they
        /// are open, and back to the starting count once they close.
        @Test func threadModelHoldsTwoThousandIdleConnectionsThenEndsEveryThread() throws {
            try withEchod(config: Echod.config(model: "thread")) { server in
                try roundTrip(port: server.port)
                // The round trip's thread may still be on its way out.
                let baseline = settledThreadCount(server.pid)
                var clients: [Client] = []
                for _ in 0..<2000 { clients.append(try Client(port: server.port, timeout: .seconds(10))) }
                // Every connection is served by its own thread: a probe on each echoes.
                for (i, c) in clients.enumerated() {
                    let probe = Array("probe \(i)\n".utf8)
                    try c.writeAll(probe)
                    #expect(try c.readExactly(probe.count) == probe)
                }
                #expect(threadCount(server.pid) == baseline + 2000)
                clients.removeAll()
                var now = 0
                let back = waitUntil(timeout: .seconds(15)) {
                    now = threadCount(server.pid)
                    return now == baseline
                }
                #expect(back, "threads: \(baseline) before, \(now) after closing 2000 connections")
            }
        }

        /// A burst of 12 connections against a limit of 4: never more than 4 served at once, the
        /// rest wait in the backlog (none refused) and are served as earlier ones close.
        @Test(arguments: [
            ("event", "4", ""),
            ("thread", "auto", "[Thread]\nMaxThreads=4\n"),
            ("fork", "auto", "[Fork]\nMaxChildren=4\n"),
            ("thread", "4", ""),
            ("fork", "4", ""),
        ])
        func limitHoldsUnderABurstAndTheExcessIsServedLater(model: String, maxConnections: String, extra: String) throws {
            let config = Echod.config(model: model, maxConnections: maxConnections, extra: extra)
            try withEchod(config: config) { server in
                var clients: [Client] = []
                for _ in 0..<12 { clients.append(try Client(port: server.port, timeout: .seconds(10))) }
                for (i, c) in clients.enumerated() { try c.writeAll([UInt8(i)]) }
                // Exactly four are served: their byte comes back; the others stay silent.
                var served: [Int] = []
                let four = waitUntil(timeout: .seconds(5)) {
                    served = clients.indices.filter { clients[$0].hasInput() }
                    return served.count >= 4
                }
                #expect(four, "served: \(served)")
                Thread.sleep(forTimeInterval: 0.3)
                served = clients.indices.filter { clients[$0].hasInput() }
                #expect(served.count == 4, "with a limit of 4, served \(served.count): \(served)")
                // Close the served ones; the waiting ones get their turn, in batches of four.
                var remaining = Set(clients.indices)
                while !remaining.isEmpty {
                    let ready = remaining.filter { clients[$0].hasInput() }
                    #expect(ready.count <= 4, "more than 4 served at once: \(ready.sorted())")
                    for i in ready {
                        #expect(try clients[i].readExactly(1) == [UInt8(i)])
                        clients[i].close()
                        remaining.remove(i)
                    }
                    if ready.isEmpty {
                        let progressed = waitUntil(timeout: .seconds(5)) { remaining.contains { clients[$0].hasInput() } }
                        try #require(progressed, "waiting connections not served after slots freed: \(remaining.sorted())")
                    }
                }
            }
        }
    }
}

/// Direct children of `pid` with their state letter (Z = zombie), from /proc.
func childProcesses(of pid: pid_t) -> [(pid_t, String)] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    var children: [(pid_t, String)] = []
    for entry in entries {
        guard let child = pid_t(entry) else { continue }
        let stat = readText("/proc/\(child)/stat")
        // "pid (comm) S ppid ...": comm may hold spaces, so parse after the last ')'.
        guard let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 2, pid_t(fields[1]) == pid else { continue }
        children.append((child, String(fields[0])))
    }
    return children
}

/// Threads of `pid` (entries of /proc/PID/task).
func threadCount(_ pid: pid_t) -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).count
}

/// Thread count once it has stayed the same for 300 ms (or after 5 s).
func settledThreadCount(_ pid: pid_t) -> Int {
    var count = threadCount(pid)
    var stableSince = ContinuousClock.now
    let deadline = ContinuousClock.now + .seconds(5)
    while ContinuousClock.now < deadline && ContinuousClock.now - stableSince < .milliseconds(300) {
        Thread.sleep(forTimeInterval: 0.02)
        let now = threadCount(pid)
        if now != count {
            count = now
            stableSince = ContinuousClock.now
        }
    }
    return count
}

extension EchodIntegration.Models {
    /// Each fork-model child holds its own connection and nothing else of the parent's: fds 0-2
    /// and one socket, which is neither the listener nor another child's connection (a child
    /// that kept either would keep the port or a peer's connection alive after its own ended).
    @Test func forkChildrenHoldOnlyTheirOwnConnection() throws {
        try withEchod(config: Echod.config(model: "fork")) { server in
            let parentSockets = Set(socketInodes(pid: server.pid).values)
            try #require(!parentSockets.isEmpty, "no socket in echod's /proc/\(server.pid)/fd")
            var clients: [Client] = []
            for i in 0..<6 {
                let client = try Client(port: server.port, timeout: .seconds(10))
                try client.writeAll([UInt8(i)])
                #expect(try client.readExactly(1) == [UInt8(i)])
                clients.append(client)
            }
            var children: [pid_t] = []
            let all = waitUntil(timeout: .seconds(5)) {
                children = childProcesses(of: server.pid).filter { $0.1 != "Z" }.map(\.0)
                return children.count == clients.count
            }
            try #require(all, "expected \(clients.count) connection processes, found \(children)")
            var seen: [String: pid_t] = [:]
            for child in children {
                let fds = descriptorTargets(pid: child)
                let extra = fds.filter { $0.key > 2 }
                let sockets = extra.values.filter { $0.hasPrefix("socket:") }
                #expect(extra.count == 1 && sockets.count == 1, "child \(child) holds more than its connection: \(fds.sorted { $0.key < $1.key })")
                for socket in sockets {
                    #expect(!parentSockets.contains(socket), "child \(child) holds the parent's \(socket) (a listener)")
                    if let other = seen[socket] { Issue.record("children \(other) and \(child) both hold \(socket)") }
                    seen[socket] = child
                }
            }
            withExtendedLifetime(clients) {}
        }
    }

    /// The thread model catches SIGUSR2 (without SA_RESTART) to interrupt blocked connection
    /// threads at a stop. A storm of it, sent to each connection thread (tgkill) while clients
    /// read slowly through a small window, interrupts send(2) part-way, so it returns a short
    /// count and the rest must still go out; and blocked reads return EINTR. Not one byte may
    /// be lost or doubled for it.
    @Test func threadModelSurvivesAnInterruptStormDuringTransfers() throws {
        try withEchod(config: Echod.config(model: "thread")) { server in
            let plans = (0..<12).map {
                FlowPlan(bytes: 8 << 20, seed: 9100 + UInt64($0), readChunk: [499, 1499, 2999][$0 % 3], receiveBuffer: 4096)
            }
            let load = try EchoLoad(port: server.port, plans: plans)
            let pid = server.pid
            let tally = StormTally()
            let storm = Thread {
                while !tally.done.load(ordering: .relaxed) {
                    for tid in threadNames(pid).keys where tid != pid {
                        if threadKill(pid, tid, SIGUSR2) == 0 { tally.sent.add(1, ordering: .relaxed) }
                    }
                    usleep(100)
                }
            }
            storm.start()
            let finished = try load.runToCompletion(timeout: .seconds(40))
            tally.done.store(true, ordering: .relaxed)
            while !storm.isFinished { usleep(10_000) }
            let sent = tally.sent.load(ordering: .relaxed)
            #expect(sent > 500, "only \(sent) signals reached connection threads")
            #expect(load.failures == [])
            #expect(finished, "\(load.unfinishedSummary); \(server.describeState())")
            #expect(load.totalRead == plans.count * (8 << 20))
            #expect(server.child.isRunning, "\(server.describeState())")
        }
    }
}

/// Shared between a test and its signal-storm thread.
final class StormTally: Sendable {
    let done = Atomic<Bool>(false)
    let sent = Atomic<Int>(0)
}

/// "fd -> target" of every descriptor of `pid` (/proc/PID/fd).
func descriptorTargets(pid: pid_t) -> [Int: String] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
    var targets: [Int: String] = [:]
    for entry in entries {
        guard let fd = Int(entry) else { continue }
        targets[fd] = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? "?"
    }
    return targets
}

/// The "socket:[inode]" targets of `pid`'s descriptors, by fd.
func socketInodes(pid: pid_t) -> [Int: String] { descriptorTargets(pid: pid).filter { $0.value.hasPrefix("socket:") } }

/// tgkill(2): a signal to one thread. glibc 2.30+ exports it, but only under _GNU_SOURCE,
/// which Swift's Glibc module does not define: looked up at run time.
func threadKill(_ pid: pid_t, _ tid: pid_t, _ signal: Int32) -> Int32 {
    typealias TgKill = @convention(c) (pid_t, pid_t, Int32) -> Int32
    guard let symbol = dlsym(nil, "tgkill") else { return -1 }
    return unsafeBitCast(symbol, to: TgKill.self)(pid, tid, signal)
}
