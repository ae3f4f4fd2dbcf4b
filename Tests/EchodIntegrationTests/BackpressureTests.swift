// A client that writes without reading must be held back by TCP flow control, not by
// echod buffering its data: echod keeps at most ~64 KiB per connection.
import Testing

extension EchodIntegration {
    @Suite struct Backpressure {
        static let total = 256 << 20
        static let rssAllowance = 16 << 20

        @Test(arguments: servingModels)
        func nonReadingClientIsHeldBackThenGetsEveryByte(model: String) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                // Warm-up, so buffers echod allocates lazily on its first connection are in the baseline.
                try roundTrip(port: server.port, count: 100_000)
                let load = try EchoLoad(port: server.port, plans: [FlowPlan(bytes: Self.total, seed: 256, reading: false)])
                let flow = load.flows[0]
                let baseline = try server.residentBytes()
                var peakHeld = baseline
                var lastSample = ContinuousClock.now

                // Write as much as the kernel takes, until no byte has gone in for 500 ms.
                var lastProgress = ContinuousClock.now
                let writeDeadline = Deadline(.seconds(15))
                while ContinuousClock.now - lastProgress < .milliseconds(500), !writeDeadline.hasExpired, flow.wantsWrite, !flow.isDone {
                    if try load.step(timeout: .milliseconds(50)) > 0 { lastProgress = .now }
                    if ContinuousClock.now - lastSample > .milliseconds(20) {
                        peakHeld = max(peakHeld, try server.residentBytes())
                        lastSample = .now
                    }
                }
                peakHeld = max(peakHeld, try server.residentBytes())
                let stalledAfter = flow.written
                #expect(flow.failure == nil)
                #expect(stalledAfter < Self.total, "all \(Self.total) bytes were accepted without reading: no backpressure")
                #expect(
                    peakHeld - baseline < Self.rssAllowance,
                    "VmRSS grew \((peakHeld - baseline) >> 10) KiB while a client held \(stalledAfter >> 10) KiB unread")

                // Now read as well: the whole 256 MiB must come back byte-exact.
                flow.plan.reading = true
                var peakStreaming = baseline
                let finished = try load.run(timeout: .seconds(40)) { load in
                    if ContinuousClock.now - lastSample > .milliseconds(50) {
                        peakStreaming = max(peakStreaming, (try? server.residentBytes()) ?? 0)
                        lastSample = .now
                    }
                    return load.flows[0].isDone
                }
                #expect(load.failures == [])
                #expect(finished, "\(load.unfinishedSummary); \(server.describeState())")
                #expect(flow.readCount == Self.total)
                #expect(
                    peakStreaming - baseline < Self.rssAllowance,
                    "VmRSS grew \((peakStreaming - baseline) >> 10) KiB while streaming")
            }
        }
    }
}
