// SPDX-License-Identifier: Apache-2.0
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

        /// Clients that read slowly, in odd chunk sizes and with a small receive window, while
        /// they keep sending: echod's writes come back partial (the event model keeps the rest
        /// and waits for EPOLLOUT; the blocking models' send(2) returns short when interrupted),
        /// and every byte must still come back once, in order.
        @Test(arguments: servingModels)
        func slowReadersInOddChunksGetEveryByteAcrossPartialWrites(model: String) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                let chunks = [1, 997, 1999, 4093, 7919, 13_001]
                let plans = chunks.enumerated().map { index, chunk in
                    FlowPlan(
                        // Past echod's send buffer (autotuned up to 4 MiB), so its sends come back short.
                        bytes: chunk == 1 ? 40_000 : (12 << 20) + chunk, seed: 1300 + UInt64(index),
                        readChunk: chunk, receiveBuffer: 4096)
                }
                let load = try EchoLoad(port: server.port, plans: plans)
                let finished = try load.runToCompletion(timeout: .seconds(50))
                #expect(load.failures == [])
                #expect(finished, "\(load.unfinishedSummary); \(server.describeState())")
                for flow in load.flows { #expect(flow.readCount == flow.plan.bytes, "flow \(flow.index)") }
            }
        }

        /// A rest that echod could not send is itself sent in parts. The listener handed to echod
        /// has a 16 KiB SO_SNDBUF, which its connections inherit (and which turns off the send
        /// buffer's autotuning, that otherwise grows it to MiBs on loopback), and the clients read
        /// slowly through a 4 KiB window: when the event model's EPOLLOUT comes, less room has
        /// opened than the rest it holds (up to one 64 KiB read). Each later try must start where
        /// the last one stopped: a byte sent twice or skipped shows at its stream offset.
        @Test(arguments: servingModels)
        func restsSentInSeveralPartsKeepTheStreamExact(model: String) throws {
            let (listener, _) = try makeListener()
            try listener.setOption(SOL_SOCKET, SO_SNDBUF, Int32(8 << 10), "SO_SNDBUF")  // the kernel doubles it
            try withEchod(config: Echod.config(model: model), listener: listener) { server in
                let plans = (0..<4).map { i in
                    FlowPlan(bytes: (1 << 20) + 4093 * i, seed: 1400 + UInt64(i), readChunk: 3001 + 2 * i, receiveBuffer: 4096)
                }
                let load = try EchoLoad(port: server.port, plans: plans)
                let finished = try load.runToCompletion(timeout: .seconds(50))
                #expect(load.failures == [])
                #expect(finished, "\(load.unfinishedSummary); \(server.describeState())")
                for flow in load.flows { #expect(flow.readCount == flow.plan.bytes, "flow \(flow.index)") }
            }
        }

        /// Clients that vanish mid-transfer (close with unread data; RST via SO_LINGER 0)
        /// while others transfer: the others finish byte-exact and echod keeps serving.
        ///
        /// The overlap is arranged, not hoped for: the steady flows send their first MiB and
        /// stop there with the connection open; only once each has had all of it back (so each
        /// is mid-stream) and each leaving flow has data in both directions do the leaving flows
        /// close; then the steady flows send the rest.
        @Test(arguments: servingModels)
        func clientsLeavingMidTransferDoNotDisturbOthers(model: String) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                let firstPart = 1 << 20
                let whole = 4 << 20
                let steady = (0..<10).map { FlowPlan(bytes: firstPart, seed: 500 + UInt64($0), halfClose: false) }
                let leaving = (0..<10).map { FlowPlan(bytes: 8 << 20, seed: 600 + UInt64($0), halfClose: false) }
                let load = try EchoLoad(port: server.port, plans: zip(steady, leaving).flatMap { [$0, $1] })
                let steadyFlows = load.flows.filter { $0.index % 2 == 0 }
                let leavingFlows = load.flows.filter { $0.index % 2 == 1 }

                let arranged = try load.run(timeout: .seconds(30)) { _ in
                    !load.failures.isEmpty
                        || (steadyFlows.allSatisfy { $0.readCount == firstPart }
                            && leavingFlows.allSatisfy { $0.written >= 512 << 10 && $0.readCount >= 64 << 10 })
                }
                try #require(load.failures == [] && arranged, "\(load.failures) \(load.unfinishedSummary); \(server.describeState())")
                for (i, flow) in leavingFlows.enumerated() { load.abort(flow, linger0: i % 2 == 1) }
                // The departures have happened while every steady flow was open and mid-stream.
                #expect(steadyFlows.allSatisfy { !$0.isDone && $0.readCount == firstPart })

                for flow in steadyFlows {
                    flow.plan.bytes = whole
                    flow.plan.halfClose = true
                }
                let finished = try load.runToCompletion(timeout: .seconds(30))
                #expect(load.failures == [])
                #expect(finished, "\(load.unfinishedSummary); \(server.describeState())")
                #expect(leavingFlows.allSatisfy { $0.aborted })
                #expect(steadyFlows.allSatisfy { $0.isComplete && $0.readCount == whole })
                #expect(server.child.isRunning, "\(server.describeState())")
                try roundTrip(port: server.port, count: 70_000, seed: 9)
            }
        }
    }
}
