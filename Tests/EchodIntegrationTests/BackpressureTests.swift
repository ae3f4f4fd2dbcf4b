// SPDX-License-Identifier: Apache-2.0
// A client that writes without reading must be held back by TCP flow control, not by echod
// buffering its data. The design bound is one read buffer per connection (the event model's
// 64 KiB pending buffer; the thread and fork models' 16 KiB echo buffer): the memory of the
// process that holds the connection (for the fork model, its child) may grow by that and a
// stated margin, no more.
import Glibc
import Testing

extension EchodIntegration {
    @Suite struct Backpressure {
        static let total = 256 << 20

        /// What one connection may hold in user space, by design (Worker.swift's
        /// `echoBufferSize`; ThreadModel/ForkModel `bufferSize`).
        static func designBound(model: String) -> Int { model == "event" ? 64 << 10 : 16 << 10 }

        /// Allowance on top of the design bound for what is not the connection's data: a page
        /// of stack or malloc bookkeeping here and there. Rss is read from smaps_rollup, which
        /// counts pages exactly (VmRSS may lag by up to 64 pages per thread). A buffer four times
        /// the design size, or one that grows with the unread data, exceeds it.
        static let margin = 192 << 10

        @Test(arguments: servingModels)
        func nonReadingClientIsHeldBackThenGetsEveryByte(model: String) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                // Warm-up, so buffers echod allocates lazily on its first connection are in the baseline.
                try roundTrip(port: server.port, count: 100_000)
                let load = try EchoLoad(port: server.port, plans: [FlowPlan(bytes: Self.total, seed: 256)])
                let flow = load.flows[0]
                // The baseline is taken before the connection carries a byte, so its buffer (in
                // the fork model, the child's pages) counts against the bound.
                let holder = try connectionHolder(server, model: model)
                let baseline = try residentBytes(pid: holder)
                let echoing = try load.run(timeout: .seconds(10)) { $0.flows[0].readCount >= 300_000 || $0.flows[0].isDone }
                try #require(echoing && flow.failure == nil, "\(load.unfinishedSummary); \(server.describeState())")
                flow.plan.reading = false
                var peakHeld = baseline
                var lastSample = ContinuousClock.now

                // Write as much as the kernel takes, until no byte has gone in for 500 ms.
                var lastProgress = ContinuousClock.now
                let writeDeadline = Deadline(.seconds(15))
                while ContinuousClock.now - lastProgress < .milliseconds(500), !writeDeadline.hasExpired, flow.wantsWrite, !flow.isDone {
                    if try load.step(timeout: .milliseconds(50)) > 0 { lastProgress = .now }
                    if ContinuousClock.now - lastSample > .milliseconds(20) {
                        peakHeld = max(peakHeld, try residentBytes(pid: holder))
                        lastSample = .now
                    }
                }
                peakHeld = max(peakHeld, try residentBytes(pid: holder))
                let stalledAfter = flow.written
                let bound = Self.designBound(model: model) + Self.margin
                #expect(flow.failure == nil)
                #expect(stalledAfter < Self.total, "all \(Self.total) bytes were accepted without reading: no backpressure")
                #expect(
                    sanitizer != nil || peakHeld - baseline <= bound,
                    "pid \(holder) (\(model)): Rss grew \((peakHeld - baseline) >> 10) KiB, bound \(bound >> 10) KiB, while a client held \((stalledAfter - flow.readCount) >> 10) KiB unread")

                // Now read as well: the whole 256 MiB must come back byte-exact.
                flow.plan.reading = true
                var peakStreaming = baseline
                let finished = try load.run(timeout: .seconds(40)) { load in
                    if ContinuousClock.now - lastSample > .milliseconds(50) {
                        peakStreaming = max(peakStreaming, (try? residentBytes(pid: holder)) ?? 0)
                        lastSample = .now
                    }
                    return load.flows[0].isDone
                }
                #expect(load.failures == [])
                #expect(finished, "\(load.unfinishedSummary); \(server.describeState())")
                #expect(flow.readCount == Self.total)
                #expect(
                    sanitizer != nil || peakStreaming - baseline <= bound,
                    "pid \(holder) (\(model)): Rss grew \((peakStreaming - baseline) >> 10) KiB while streaming, bound \(bound >> 10) KiB")
            }
        }

        /// The process whose memory holds the connection: echod itself, or (fork model) the one
        /// live child serving it.
        func connectionHolder(_ server: EchodServer, model: String) throws -> pid_t {
            guard model == "fork" else { return server.pid }
            var live: [pid_t] = []
            let one = waitUntil(timeout: .seconds(5)) {
                live = childProcesses(of: server.pid).filter { $0.1 != "Z" }.map(\.0)
                return live.count == 1
            }
            try #require(one, "expected exactly one connection process, found \(live)")
            return live[0]
        }
    }
}
