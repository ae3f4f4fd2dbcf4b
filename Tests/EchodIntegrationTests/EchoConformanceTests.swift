// RFC 862 over TCP: every byte comes back, in order, on every connection, and a client's
// half-close or abrupt departure is handled without disturbing anyone else. One suite, run as
// is against each concurrency model.
import Glibc
import Testing

extension EchodIntegration {
    @Suite struct EchoConformance {
        static let sizes = [1, 100, 64 << 10, (64 << 10) + 1, 1 << 20, 4 << 20]

        @Test(arguments: servingModels, sizes)
        func oneConnectionEchoesPayloadExactly(model: String, size: Int) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                let load = try EchoLoad(port: server.port, plans: [FlowPlan(bytes: size, seed: UInt64(size))])
                let finished = try load.runToCompletion(timeout: .seconds(20))
                #expect(load.failures == [])
                #expect(finished, "\(load.unfinishedSummary); \(server.describeState())")
                #expect(load.flows[0].readCount == size)
            }
        }

        @Test(arguments: servingModels, sizes)
        func twoHundredConcurrentConnectionsEchoExactly(model: String, size: Int) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                let plans = (0..<200).map { FlowPlan(bytes: size, seed: UInt64(size) &* 1000 &+ UInt64($0)) }
                let load = try EchoLoad(port: server.port, plans: plans)
                let finished = try load.runToCompletion(timeout: .seconds(40))
                #expect(load.failures == [])
                #expect(finished, "\(load.unfinishedSummary); \(server.describeState())")
                #expect(load.totalRead == size * plans.count)
            }
        }

        /// Send, shutdown(SHUT_WR), and the whole echo arrives followed by EOF.
        @Test(arguments: servingModels)
        func halfCloseEchoesEverythingThenEOF(model: String) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                let client = try Client(port: server.port, timeout: .seconds(10))
                let payload = Pattern.bytes(seed: 42, count: 20_000)
                try client.writeAll(payload)
                try client.shutdownWrite()
                // readToEOF throws on a timeout, so an echod that never closes fails here.
                let echoed = try client.readToEOF(limit: payload.count)
                #expect(describeMismatch(received: echoed, expected: payload) == nil)
            }
        }

        /// Clients that vanish mid-transfer (close with unread data; RST via SO_LINGER 0)
        /// while others transfer: the others finish byte-exact and echod keeps serving.
        @Test(arguments: servingModels)
        func clientsLeavingMidTransferDoNotDisturbOthers(model: String) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                let steady = (0..<10).map { FlowPlan(bytes: 4 << 20, seed: 500 + UInt64($0)) }
                let leaving = (0..<10).map {
                    FlowPlan(bytes: 8 << 20, seed: 600 + UInt64($0), halfClose: false, abort: (written: 512 << 10, read: 64 << 10, linger0: $0 % 2 == 1))
                }
                // Interleave so departures happen while the steady flows are mid-stream.
                let load = try EchoLoad(port: server.port, plans: zip(steady, leaving).flatMap { [$0, $1] })
                let finished = try load.runToCompletion(timeout: .seconds(30))
                #expect(load.failures == [])
                #expect(finished, "\(load.unfinishedSummary); \(server.describeState())")
                let leftEarly = load.flows.filter(\.aborted).count
                let steadyBytes = load.flows.filter { $0.plan.abort == nil }.reduce(0) { $0 + $1.readCount }
                #expect(leftEarly == leaving.count)
                #expect(load.abortsDuringTransfer == leaving.count, "departures must overlap the steady transfers")
                #expect(steadyBytes == steady.count * (4 << 20))
                #expect(server.child.isRunning, "\(server.describeState())")
                try roundTrip(port: server.port, count: 70_000, seed: 9)
            }
        }
    }
}
