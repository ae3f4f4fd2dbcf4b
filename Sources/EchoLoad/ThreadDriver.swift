// SPDX-License-Identifier: Apache-2.0
// The thread client model: one thread per connection with blocking I/O (plus a reader thread per
// connection for `rate` and `stream`, which must read while they write). Threads get small
// stacks (`stackSize`). Every connection thread waits for the connect epoch, connects (at its
// place in the global connect schedule under `hold --rate`), then waits at the start gate, which
// opens once every connect of the run is resolved (`RunControl`): warm-up, the measured period
// and holds start together in every thread and process.
//
// Timeouts use SO_RCVTIMEO/SO_SNDTIMEO (SO_SNDTIMEO bounds connect(2) too on Linux).
import CEchoShims
import EchoCore
import Glibc
import Histogram
import Synchronization

enum ThreadDriver {
    /// Stack of each connection thread: the loops are shallow; fault messages are the deepest path.
    static let stackSize = 128 * 1024

    static func run(_ options: LoadOptions, control: RunControl, live: LiveCounters) throws(LoadError) -> Tally {
        let shared = ThreadShared(options: options, control: control, live: live)
        var threads: [JoinableThread] = []
        threads.reserveCapacity(options.connections)
        for i in 0..<options.connections {
            do {
                threads.append(try JoinableThread(name: "echoload-c", stackSize: stackSize) {
                    ConnectionThread(shared: shared, index: i).run()
                })
            } catch {
                // Out of threads: the connections not started count as failed with that errno.
                for _ in i..<options.connections { shared.connectOutcome(failure: error.errno, now: monotonicNanoseconds()) }
                if options.mode == .hold { control.probed(options.connections - i, now: monotonicNanoseconds()) }
                shared.addFault(Tally(), note: "cannot start thread \(i): \(error)")
                break
            }
        }
        for t in threads { t.join() }
        return shared.result()
    }
}

/// What the connection threads share.
final class ThreadShared: Sendable {
    let options: LoadOptions
    let control: RunControl
    let live: LiveCounters
    private let lastResolved = Atomic<Int64>(0)
    private let tally: Locked<Tally>
    /// Latency histograms (and per-interval figures), striped so threads rarely wait on each
    /// other's lock.
    let stripes: [LockedHistogram]

    init(options: LoadOptions, control: RunControl, live: LiveCounters) {
        self.options = options
        self.control = control
        self.live = live
        var t = Tally()
        t.requested = options.connections
        tally = Locked(t)
        let measuresLatency = options.mode == .pingpong || options.mode == .rate
        stripes = (0..<(measuresLatency || options.intervalLength > 0 ? 8 : 0)).map { _ in LockedHistogram() }
    }

    /// The measured window (waits for the start).
    var window: MeasuredWindow {
        let ready = control.startGate.wait()
        return MeasuredWindow(start: ready + options.warmup, end: ready + options.warmup + options.duration)
    }

    /// Whether `t` counts: inside `window`, and before the run was stopped.
    @inline(__always) func counts(_ t: Int64, _ window: MeasuredWindow) -> Bool {
        guard window.contains(t) else { return false }
        let s = control.stoppedAt
        return s == 0 || t < s
    }

    /// Whether the run was told to stop.
    @inline(__always) var stopped: Bool { control.stoppedAt != 0 }

    /// Counts one connect's outcome (nil: success); the run's last one makes the process ready.
    func connectOutcome(failure: Int32?, now: Int64) {
        if let e = failure {
            tally.withLock { $0.connectFailures[errnoName(e), default: 0] += 1 }
            live.failed.add(1, ordering: .relaxed)
        } else {
            let epoch = control.connectGate.current
            tally.withLock {
                $0.established += 1
                $0.noteEstablished(at: now, epoch: epoch)
            }
            live.established.add(1, ordering: .relaxed)
            live.open.add(1, ordering: .relaxed)
        }
        lastResolved.store(now, ordering: .relaxed)
        control.resolved(1, now: now)
    }

    func addFault(_ t: Tally, note: String? = nil) {
        tally.withLock {
            $0.merge(t)
            if let note { $0.noteFault(note) }
        }
    }

    func result() -> Tally {
        var t = tally.withLock { $0 }
        let epoch = control.connectGate.current
        t.connectNanos = max(0, lastResolved.load(ordering: .relaxed) - epoch)
        if options.mode != .hold && control.startGate.current != 0 {
            t.measuredNanos = control.measured(window)
            if options.mode == .rate {
                let w = window
                let measured = MeasuredWindow(start: w.start, end: w.start + t.measuredNanos)
                let base = options.connectionIndexBase
                t.scheduled = RateSchedule(start: control.startGate.current, spacing: 1e9 / options.rate!,
                    connections: options.totalConnections).scheduled(connections: base..<base + options.connections, in: measured)
            }
        }
        if !stripes.isEmpty {
            var h = Latency.makeHistogram()
            let until = window.start + t.measuredNanos
            for s in stripes {
                s.sink.withLock {
                    h.add($0.histogram)
                    if var recorder = $0.intervals { t.intervals.merge(recorder.finish(until: until)) }
                }
            }
            if options.mode == .pingpong || options.mode == .rate { t.latency = h }
        }
        return t
    }

    /// Runs `body` on stripe `index`'s sink (under its lock), with its interval recorder set up
    /// once the window is known; nothing without stripes.
    @inline(__always)
    func withSink<T>(_ index: Int, _ body: (inout LatencySink) -> T) -> T? {
        guard !stripes.isEmpty else { return nil }
        return stripes[index % stripes.count].sink.withLock { sink in
            if sink.intervals == nil && options.intervalLength > 0 && control.startGate.current != 0 {
                sink.intervals = IntervalRecorder(window: window, length: options.intervalLength)
            }
            return body(&sink)
        }
    }
}

final class LockedHistogram: Sendable {
    let sink = Locked(LatencySink())
}

/// Counters one connection's writer and reader threads share (rate, stream).
final class ConnectionProgress: Sendable {
    let sent = Atomic<UInt64>(0)
    let writerDone = Atomic<Bool>(false)
    /// The reader gave up (fault counted): the writer's own failure that follows is not a second fault.
    let readerFailed = Atomic<Bool>(false)
    /// rate: where the stream skips the warm-up's backlog (`RateSkip`); stored by the writer
    /// before it sends the first byte past `skipFrom`, so the reader sees it before those bytes.
    let skipFrom = Atomic<UInt64>(.max)
    let skipCount = Atomic<UInt64>(0)

    var skip: RateSkip {
        RateSkip(from: skipFrom.load(ordering: .acquiring), count: skipCount.load(ordering: .acquiring))
    }
}

/// One connection, run on its own thread.
struct ConnectionThread {
    let shared: ThreadShared
    let index: Int
    var options: LoadOptions { shared.options }
    var global: Int { options.connectionIndexBase + index }
    var key: UInt64 { Pattern.key(forConnection: global) }
    var control: RunControl { shared.control }

    func run() {
        // hold: every connection's probe is counted as resolved once, however the thread ends
        // (a held one reports before it waits for the release).
        var probeReported = false
        defer { if options.mode == .hold && !probeReported { control.probed(1, now: monotonicNanoseconds()) } }
        let epoch = control.connectGate.wait()
        let due = control.connectTime(epoch: epoch, global: global)
        // Stopped before its turn to connect: never attempted (not a failure).
        if shared.stopped || (due > monotonicNanoseconds() && !control.stopGate.sleep(until: due)) { return }
        guard let fd = connect() else { return }
        defer {
            closeNoRetry(fd)
            shared.live.open.subtract(1, ordering: .relaxed)
            if options.intervalLength > 0 {
                let now = monotonicNanoseconds()
                shared.withSink(index) { $0.intervals?.closed(at: now) }
            }
        }
        let ready = control.startGate.wait()
        var tally = Tally()
        switch options.mode {
        case .hold:
            let answered = hold(fd, ready: ready, &tally)
            probeReported = true
            control.probed(1, now: monotonicNanoseconds())
            if answered {
                // Open, with nothing closed, until every probe of the run is resolved.
                _ = control.releaseGate.wait()
                expectEOF(fd, sent: 16, &tally)
            }
        case .pingpong: pingpong(fd, &tally)
        case .rate, .stream: writerAndReader(fd, &tally)
        case .udp: preconditionFailure("udp runs in DatagramDriver")
        }
        shared.addFault(tally)
    }

    /// Blocking connect bounded by `connectTimeout`. - Returns: the socket, or nil (counted).
    private func connect() -> Int32? {
        let source = options.sources.isEmpty ? nil : options.sources[global % options.sources.count]
        switch ClientSocket.open(to: options.target, from: source, blocking: true, connectTimeout: options.connectTimeout) {
        case .connected(let fd):
            ClientSocket.setTimeout(fd, SO_SNDTIMEO, options.drainTimeout)
            ClientSocket.setTimeout(fd, SO_RCVTIMEO, options.drainTimeout)
            shared.connectOutcome(failure: nil, now: monotonicNanoseconds())
            return fd
        case .inProgress(let fd):  // not for blocking sockets; counted as a timeout all the same
            closeNoRetry(fd)
            shared.connectOutcome(failure: ETIMEDOUT, now: monotonicNanoseconds())
            return nil
        case .failed(_, let e):
            shared.connectOutcome(failure: e, now: monotonicNanoseconds())
            return nil
        }
    }

    // MARK: - Blocking I/O with verification

    enum IOOutcome { case ok, failed }

    /// Sends stream bytes [from, from+count). Counts a failure into `tally`.
    private func sendAll(_ fd: Int32, from: UInt64, count: Int, _ tally: inout Tally) -> IOOutcome {
        var done = 0
        while done < count {
            let want = min(count - done, Pattern.maxChunk)
            if want > tally.largestWrite { tally.largestWrite = want }
            switch Pattern.send(fd, key: key, position: from + UInt64(done), count: want) {
            case .transferred(let n):
                done += n
                tally.totalBytesSent += UInt64(n)
                shared.live.bytesSent.add(n, ordering: .relaxed)
                continue
            case .interrupted:
                continue
            case .wouldBlock:  // SO_SNDTIMEO ran out
                fault(&tally) { $0.recordSendTimeout(connection: global) }
            case .failed(let e):
                fault(&tally) { $0.recordIOError(connection: global, errno: e) }
            case .endOfStream:
                break  // not a send outcome
            }
            return .failed
        }
        return .ok
    }

    /// Receives exactly `count` bytes of echo starting at stream offset `from`, checking each.
    private func receiveAll(
        _ fd: Int32, from: UInt64, count: Int, sent: UInt64, buffer: UnsafeMutableRawPointer, capacity: Int,
        _ tally: inout Tally
    ) -> IOOutcome {
        var done = 0
        while done < count {
            let received = from + UInt64(done)
            switch SocketIO.receive(fd, into: buffer, count: min(capacity, count - done)) {
            case .transferred(let n):
                if let bad = Pattern.firstMismatch(buffer, count: n, key: key, position: from + UInt64(done)) {
                    mismatch(at: from + UInt64(done + bad), got: buffer.load(fromByteOffset: bad, as: UInt8.self), &tally)
                    return .failed
                }
                done += n
                tally.totalBytesReceived += UInt64(n)
                shared.live.bytesReceived.add(n, ordering: .relaxed)
                continue
            case .interrupted:
                continue
            case .endOfStream:
                fault(&tally) { $0.recordPeerClose(connection: global, received: received, sent: sent) }
            case .wouldBlock:  // SO_RCVTIMEO ran out
                fault(&tally) { $0.recordEchoTimeout(connection: global, received: received, sent: sent) }
            case .failed(let e):
                fault(&tally) { $0.recordIOError(connection: global, errno: e) }
            }
            return .failed
        }
        return .ok
    }

    private func mismatch(at position: UInt64, got: UInt8, _ tally: inout Tally) {
        let expected = Pattern.byte(key: key, position: position)
        fault(&tally) { $0.recordMismatch(connection: global, position: position, got: got, expected: expected) }
    }

    /// Records one fault into `tally` and the progress counters.
    @inline(__always)
    private func fault(_ tally: inout Tally, _ record: (inout Tally) -> Void) {
        record(&tally)
        shared.live.faults.add(1, ordering: .relaxed)
        if options.intervalLength > 0 {
            let now = monotonicNanoseconds()
            shared.withSink(index) { $0.intervals?.fault(at: now) }
        }
    }

    // MARK: - Modes

    /// Holds until the hold ends, then probes. - Returns: whether the probe was answered.
    private func hold(_ fd: Int32, ready: Int64, _ tally: inout Tally) -> Bool {
        // Until the hold ends, or the run is stopped: then the probe shows what is held now.
        _ = control.stopGate.sleep(until: ready + options.duration)
        let span = max(0, monotonicNanoseconds() - ready)
        var probe = (UInt64(0), UInt64(0))  // 16 bytes of stack for the probe's echo
        let ok = withUnsafeMutableBytes(of: &probe) { buf -> Bool in
            guard sendAll(fd, from: 0, count: 16, &tally) == .ok else { return false }
            return receiveAll(fd, from: 0, count: 16, sent: 16, buffer: buf.baseAddress!, capacity: 16, &tally) == .ok
        }
        if ok {
            tally.held += 1
            tally.holdNanos = span
            shared.live.held.add(1, ordering: .relaxed)
        }
        return ok
    }

    /// The echo is complete: shut the write side and read to the server's EOF (bounded by the
    /// drain timeout), so that bytes sent beyond the echo are caught, not left unread.
    private func expectEOF(_ fd: Int32, sent: UInt64, _ tally: inout Tally) {
        Glibc.shutdown(fd, Int32(SHUT_WR))
        ClientSocket.setTimeout(fd, SO_RCVTIMEO, options.drainTimeout)
        var scratch = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        while true {
            switch withUnsafeMutableBytes(of: &scratch, { SocketIO.receive(fd, into: $0.baseAddress!, count: $0.count) }) {
            case .transferred:
                fault(&tally) { $0.recordTrailingBytes(connection: global, sent: sent) }
                return
            case .interrupted:
                continue
            case .endOfStream, .wouldBlock, .failed:
                return  // EOF; or no close within the drain timeout, or a reset: nothing we sent is lost
            }
        }
    }

    private func pingpong(_ fd: Int32, _ tally: inout Tally) {
        let size = options.size
        let capacity = min(size, 256 * 1024)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
        defer { buffer.deallocate() }
        let window = shared.window
        var position: UInt64 = 0
        while monotonicNanoseconds() < window.end && !shared.stopped {
            let t0 = monotonicNanoseconds()
            guard sendAll(fd, from: position, count: size, &tally) == .ok else { return }
            guard receiveAll(fd, from: position, count: size, sent: position + UInt64(size), buffer: buffer,
                capacity: capacity, &tally) == .ok
            else { return }
            position += UInt64(size)
            let t1 = monotonicNanoseconds()
            shared.live.messages.add(1, ordering: .relaxed)
            if shared.counts(t1, window) { shared.withSink(index) { tally.countMessage(size: size, latency: t1 - t0, at: t1, into: &$0) } }
        }
        expectEOF(fd, sent: position, &tally)
    }

    /// rate and stream: this thread writes, a second one reads and verifies.
    private func writerAndReader(_ fd: Int32, _ tally: inout Tally) {
        let progress = ConnectionProgress()
        let reader: JoinableThread
        let me = self
        let readerTally = Locked(Tally())
        do {
            reader = try JoinableThread(name: "echoload-r", stackSize: ThreadDriver.stackSize) {
                var t = Tally()
                me.read(fd, progress, &t)
                if t.faults > 0 {
                    progress.readerFailed.store(true, ordering: .releasing)
                    Glibc.shutdown(fd, Int32(SHUT_RDWR))  // unblocks the writer
                }
                readerTally.withLock { $0.merge(t) }
            }
        } catch {
            tally.ioErrors[errnoName(error.errno), default: 0] += 1
            tally.noteFault("connection \(global): cannot start its reader thread: \(error)")
            return
        }
        var writerTally = Tally()
        write(fd, progress, &writerTally)
        reader.join()
        if progress.readerFailed.load(ordering: .acquiring) {
            // Keep the writer's counts, drop the failure the reader's shutdown caused.
            writerTally.timeouts = 0
            writerTally.ioErrors = [:]
            writerTally.firstFault = nil
        }
        tally.merge(writerTally)
        tally.merge(readerTally.withLock { $0 })
    }

    /// The run's one rate schedule, from its start.
    private func rateSchedule(ready: Int64) -> RateSchedule {
        RateSchedule(start: ready, spacing: 1e9 / options.rate!, connections: options.totalConnections)
    }

    private func write(_ fd: Int32, _ progress: ConnectionProgress, _ tally: inout Tally) {
        defer { progress.writerDone.store(true, ordering: .releasing) }
        let ready = control.startGate.wait()
        let window = shared.window
        var position: UInt64 = 0
        let size = options.size
        if options.mode == .rate {
            let schedule = rateSchedule(ready: ready)
            var m: UInt64 = 0
            var skippedWarmup = false
            while true {
                var t = schedule.intended(connection: global, message: m)
                // The window opened with the warm-up's messages not all sent (past saturation):
                // drop the rest, go on with the first message intended in the window.
                if !skippedWarmup && t < window.start && monotonicNanoseconds() >= window.start {
                    skippedWarmup = true
                    let first = schedule.firstMessage(connection: global, atOrAfter: window.start)
                    progress.skipCount.store(first - m, ordering: .releasing)
                    progress.skipFrom.store(position, ordering: .releasing)
                    m = first
                    t = schedule.intended(connection: global, message: m)
                }
                if t >= window.end { break }
                if t > monotonicNanoseconds() && !control.stopGate.sleep(until: t) { break }
                // Behind schedule: a message intended in the window still goes out after it ends,
                // unless it is later than the drain timeout (its echo would not be awaited): then
                // the rest is not offered (scheduled, never issued).
                let now = monotonicNanoseconds()
                if shared.stopped || (now >= window.end && now - t > options.drainTimeout) { break }
                if shared.counts(now, window) { tally.issued += 1 }
                guard sendAll(fd, from: position, count: size, &tally) == .ok else { return }
                position += UInt64(size)
                progress.sent.store(position, ordering: .releasing)
                m += 1
            }
        } else {
            while monotonicNanoseconds() < window.end && !shared.stopped {
                let before = tally.totalBytesSent
                guard sendAll(fd, from: position, count: size, &tally) == .ok else { return }
                position += UInt64(size)
                progress.sent.store(position, ordering: .releasing)
                let now = monotonicNanoseconds()
                if shared.counts(now, window) {
                    let n = Int(tally.totalBytesSent - before)
                    tally.bytesSent += UInt64(n)
                    shared.withSink(index) { $0.intervals?.bytes(sent: n, at: now) }
                }
            }
            // Done before the FIN goes out: the reader may see the server's EOF (which follows
            // it) at once, and must know by then that the writer has finished.
            progress.writerDone.store(true, ordering: .releasing)
            Glibc.shutdown(fd, Int32(SHUT_WR))
        }
    }

    private func read(_ fd: Int32, _ progress: ConnectionProgress, _ tally: inout Tally) {
        let ready = control.startGate.wait()
        let window = shared.window
        let capacity = 256 * 1024
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
        defer { buffer.deallocate() }
        // Short receive timeouts so the reader notices the writer finishing; "no echo" is judged
        // against drainTimeout since the last progress.
        ClientSocket.setTimeout(fd, SO_RCVTIMEO, 100_000_000)
        let schedule = options.mode == .rate ? rateSchedule(ready: ready) : RateSchedule(start: ready, spacing: 0, connections: 1)
        var received: UInt64 = 0
        var lastProgress = monotonicNanoseconds()
        while true {
            let done = progress.writerDone.load(ordering: .acquiring)
            let sent = progress.sent.load(ordering: .acquiring)
            if done && received == sent {
                expectEOF(fd, sent: sent, &tally)
                return
            }
            let outcome = SocketIO.receive(fd, into: buffer, count: capacity)
            let now = monotonicNanoseconds()
            switch outcome {
            case .transferred(let n):
                let sentNow = progress.sent.load(ordering: .acquiring)
                // The writer publishes `sent` after send() returns, so the echo may race ahead of it
                // by at most one write; only count "more than sent" beyond that.
                if received + UInt64(n) > sentNow + UInt64(max(options.size, Pattern.maxChunk)) {
                    fault(&tally) { $0.recordOverrun(connection: global, received: received + UInt64(n), sent: sentNow) }
                    return
                }
                if let bad = Pattern.firstMismatch(buffer, count: n, key: key, position: received) {
                    mismatch(at: received + UInt64(bad), got: buffer.load(fromByteOffset: bad, as: UInt8.self), &tally)
                    return
                }
                let before = received
                received += UInt64(n)
                lastProgress = now
                tally.totalBytesReceived += UInt64(n)
                shared.live.bytesReceived.add(n, ordering: .relaxed)
                if options.mode == .stream {
                    if shared.counts(now, window) {
                        tally.bytesReceived += UInt64(n)
                        shared.withSink(index) { $0.intervals?.bytes(received: n, at: now) }
                    }
                } else {
                    let completed = shared.withSink(index) {
                        tally.countRateEchoes(
                            connection: global, from: before, to: received, size: options.size, schedule: schedule,
                            skip: progress.skip, window: window, now: now, into: &$0)
                    } ?? 0
                    shared.live.messages.add(completed, ordering: .relaxed)
                }
                continue
            case .interrupted:
                continue
            case .endOfStream:
                let sent = progress.sent.load(ordering: .acquiring)
                if !(progress.writerDone.load(ordering: .acquiring) && received == sent) {
                    fault(&tally) { $0.recordPeerClose(connection: global, received: received, sent: sent) }
                }
                return
            case .wouldBlock:  // the short SO_RCVTIMEO ran out
                if received == progress.sent.load(ordering: .acquiring) {
                    lastProgress = now
                } else if now - lastProgress >= options.drainTimeout {
                    let sent = progress.sent.load(ordering: .relaxed)
                    fault(&tally) { $0.recordEchoTimeout(connection: global, received: received, sent: sent) }
                    return
                }
                continue
            case .failed(let e):
                fault(&tally) { $0.recordIOError(connection: global, errno: e) }
                return
            }
        }
    }
}
