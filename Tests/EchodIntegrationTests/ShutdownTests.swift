// SPDX-License-Identifier: Apache-2.0
// SIGTERM while connections are busy: echod stops (STOPPING=1, exit 0) only after echoing
// what it received, and StopTimeoutSec bounds how long clients can hold it up.
import CEchoShims
import let EchoCore.drainQuietPeriodMilliseconds
import Foundation
import Glibc
import Synchronization
import Testing

extension EchodIntegration {
    @Suite struct Shutdown {
        /// Twenty clients stream continuously; SIGTERM arrives mid-stream. The clients stop
        /// writing at the signal, half-close and read until EOF: every byte written before the
        /// signal must come back.
        @Test(arguments: servingModels)
        func sigtermDuringTransfersEchoesEverythingReceived(model: String) throws {
            try withEchod(config: Echod.config(model: model, stopTimeoutSec: 10)) { server in
                let plans = (0..<20).map { FlowPlan(bytes: Int.max, seed: 7000 + UInt64($0)) }
                let load = try EchoLoad(port: server.port, plans: plans)
                let busy = try load.run(timeout: .seconds(15)) { $0.flows.allSatisfy { $0.readCount >= 512 << 10 } || !$0.failures.isEmpty }
                try #require(load.failures == [] && busy, "\(load.unfinishedSummary); \(server.describeState())")

                server.child.signal(SIGTERM)
                load.stopWriting()
                let writtenBeforeSignal = load.totalWritten
                let drained = try load.runToCompletion(timeout: .seconds(20))
                #expect(load.failures == [])
                #expect(drained, "\(load.unfinishedSummary); \(server.describeState())")
                #expect(load.totalRead == writtenBeforeSignal)
                #expect(try server.notify.waitFor(line: "STOPPING=1", timeout: .seconds(5)) != nil, "notify: [\(server.notify.transcript)]")
                // Every client has half-closed and had its EOF: nothing is left to wait for, so the
                // exit follows at once, far inside StopTimeoutSec=10.
                #expect(server.child.waitExit(timeout: .seconds(4)) == .exited(0), "\(server.describeState())")
            }
        }

        /// Clients that go on sending for a second after SIGTERM (four quiet periods) and never
        /// half-close: echod keeps echoing while data arrives, gives each client its FIN only once
        /// it has been quiet, and exits as soon as they close, long before StopTimeoutSec. Every
        /// byte written, before and after the signal, comes back.
        ///
        /// "Quiet" is what the client did, so the client's side is arranged and recorded rather
        /// than hoped for: one thread drives the clients without a break from before the signal
        /// to the end of the second (the test's own wait for STOPPING=1 runs on another thread),
        /// and each flow times its pauses in sending from the signal on. A flow that gets EOF
        /// while sending without ever having paused for the quiet period fails; one whose sending
        /// did pause that long (its thread starved of CPU on a busy machine) gave echod the right
        /// to end it, and is judged only on the bytes it had back.
        @Test(arguments: servingModels)
        func clientsSendingAfterSigtermWithoutHalfCloseGetEverythingThenEOF(model: String) throws {
            let stopTimeout = 20
            let quiet = Duration.milliseconds(Int64(drainQuietPeriodMilliseconds))
            try withEchod(config: Echod.config(model: model, stopTimeoutSec: stopTimeout)) { server in
                let plans = (0..<10).map {
                    FlowPlan(bytes: Int.max, seed: 7500 + UInt64($0), halfClose: false, serverMayClose: true, quietPeriod: quiet)
                }
                let load = try EchoLoad(port: server.port, plans: plans)
                let busy = try load.run(timeout: .seconds(15)) { $0.flows.allSatisfy { $0.readCount >= 256 << 10 } || !$0.failures.isEmpty }
                try #require(load.failures == [] && busy, "\(load.unfinishedSummary); \(server.describeState())")

                let driver = SendingDriver(load)
                let sender = Thread { driver.run(for: .seconds(1)) }
                sender.start()
                let signalled = ContinuousClock.now
                driver.signalled(at: signalled)
                server.child.signal(SIGTERM)
                #expect(try server.notify.waitFor(line: "STOPPING=1", timeout: .seconds(5)) != nil, "notify: [\(server.notify.transcript)]")
                let joined = Deadline(.seconds(20))
                while !sender.isFinished && !joined.hasExpired { usleep(5_000) }
                try #require(sender.isFinished, "the sending thread did not end")
                try #require(driver.error == nil, "\(driver.error!)")

                // The load is this thread's again.
                let paused = load.flows.filter { load.longestSendGap($0) >= quiet }
                let judged = load.flows.filter { !$0.endedAfterPause }
                if !paused.isEmpty {
                    print("clientsSendingAfterSigterm(\(model)): \(paused.count) of \(load.flows.count) clients paused ≥ \(quiet) (starved); \(load.flows.count - judged.count) were ended after their pause")
                }
                #expect(load.failures == [], "\(server.describeState())")
                #expect(judged.allSatisfy { !$0.isDone }, "a client lost its connection while still sending")
                #expect(load.totalRead > driver.readAtSignal + 1 << 20, "echoing stopped at the signal")

                load.stopWriting()
                let quietSince = ContinuousClock.now
                let drained = try load.runToCompletion(timeout: .seconds(8))
                #expect(load.failures == [])
                #expect(drained, "no FIN after the clients went quiet: \(load.unfinishedSummary); \(server.describeState())")
                #expect(judged.allSatisfy { $0.readCount == $0.written }, "\(load.unfinishedSummary)")
                let status = server.child.waitExit(timeout: .seconds(8))
                let took = ContinuousClock.now - quietSince
                #expect(status == .exited(0), "\(server.describeState())")
                #expect(took < .seconds(5), "stop took \(took) after the clients went quiet (StopTimeoutSec=\(stopTimeout))")
            }
        }

        /// Clients that neither write nor close do not keep echod alive past StopTimeoutSec;
        /// what they sent before still came back, and they then see the connection end.
        @Test(arguments: servingModels)
        func stopTimeoutBoundsShutdownWithIdleClients(model: String) throws {
            let stopTimeout = 2
            try withEchod(config: Echod.config(model: model, stopTimeoutSec: stopTimeout)) { server in
                let plans = (0..<5).map { FlowPlan(bytes: 10_000, seed: 8000 + UInt64($0), halfClose: false) }
                let load = try EchoLoad(port: server.port, plans: plans)
                let echoed = try load.run(timeout: .seconds(10)) { $0.totalRead == 5 * 10_000 || !$0.failures.isEmpty }
                try #require(load.failures == [] && echoed, "\(load.unfinishedSummary); \(server.describeState())")

                let signalled = ContinuousClock.now
                server.child.signal(SIGTERM)
                #expect(try server.notify.waitFor(line: "STOPPING=1", timeout: .seconds(5)) != nil, "notify: [\(server.notify.transcript)]")
                let status = server.child.waitExit(timeout: .seconds(stopTimeout + 5))
                let took = ContinuousClock.now - signalled
                #expect(status == .exited(0), "after \(took): \(server.describeState())")
                #expect(took < .seconds(stopTimeout + 3), "took \(took) with StopTimeoutSec=\(stopTimeout)")
                // The connections are gone with echod: each client reads EOF or a reset, not a timeout.
                for flow in load.flows {
                    var byte: UInt8 = 0
                    var entry = pollfd(fd: flow.socket.fd, events: Int16(POLLIN), revents: 0)
                    #expect(poll(&entry, 1, 2000) == 1, "flow \(flow.index) still open after echod exited")
                    #expect(recv(flow.socket.fd, &byte, 1, Int32(MSG_DONTWAIT)) <= 0)
                }
            }
        }
    }
}

/// Drives an `EchoLoad` on its own thread, without a break, while the test waits for echod:
/// from before the signal until `duration` after it. The load is touched only by this thread
/// until `run` returns (the test waits for `Thread.isFinished` before it looks again).
final class SendingDriver: @unchecked Sendable {
    private let load: EchoLoad
    private let signal = Mutex<ContinuousClock.Instant?>(nil)
    private(set) var readAtSignal = 0
    private(set) var error: (any Error)?

    init(_ load: EchoLoad) { self.load = load }

    /// Called by the test just before it sends the signal.
    func signalled(at instant: ContinuousClock.Instant) { signal.withLock { $0 = instant } }

    func run(for duration: Duration) {
        var since: ContinuousClock.Instant?
        do {
            while load.failures.isEmpty {
                if since == nil, let at = signal.withLock({ $0 }) {
                    since = .now  // a whole second of sending from here, however late this thread saw it
                    readAtSignal = load.totalRead
                    load.watchSendGaps(from: at)
                }
                if let since, ContinuousClock.now - since >= duration { break }
                try load.step(timeout: .milliseconds(20))
            }
        } catch {
            self.error = error
        }
    }
}
