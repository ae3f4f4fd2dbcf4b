// SPDX-License-Identifier: Apache-2.0
// The event client model: a few threads, each with its own epoll instance and its own share of
// the connections, every connection a small state record in a flat array (no allocation per
// connection after start, none per message). Level-triggered, like echod's workers.
//
// A worker's life: `connecting` (from the connect epoch, connection g no earlier than its place
// in the global connect schedule, at most `connectConcurrency` in flight, each bounded by
// `connectTimeout`) → `waiting` (its connects are resolved; pingpong and stream traffic already
// runs, unmeasured; waits for the run's start, which comes once every connect of every worker
// and process is resolved: `RunControl`) → `running` (hold, or traffic through warm-up and the
// measured period, one window for the whole run) → `draining` (collect echoes still owed, at
// most `drainTimeout`) → done. A stop (SIGINT/SIGTERM) ends the window where it is.
//
// Every received byte is checked against the pattern at its stream offset (`Pattern`) before it
// is counted.
import CEchoShims
import EchoCore
import Glibc
import Histogram

/// Runs `options` with the event model in this process.
enum EventDriver {
    static func run(_ options: LoadOptions, control: RunControl, live: LiveCounters) throws(LoadError) -> (Tally, workers: Int) {
        let w = options.effectiveWorkers
        var workers: [EventWorker] = []
        var first = 0
        for i in 0..<w {
            let count = options.connections / w + (i < options.connections % w ? 1 : 0)
            do {
                workers.append(try EventWorker(options: options, control: control, first: first, count: count, live: live))
            } catch {
                throw .system("echoload: cannot set up event worker: \(error)")
            }
            first += count
        }
        var threads: [JoinableThread] = []
        for (i, worker) in workers.enumerated() {
            do {
                threads.append(try JoinableThread(name: "echoload-w\(i)") { worker.run() })
            } catch {
                for t in threads { t.join() }
                throw .system("echoload: cannot start worker thread: \(error)")
            }
        }
        for t in threads { t.join() }
        var tally = Tally()
        for worker in workers { tally.merge(worker.tally) }
        return (tally, w)
    }
}

/// One connection's state. Byte counts are stream offsets: `sent` bytes written so far,
/// `received` bytes echoed back and verified, `goal` the offset writing should reach.
struct EventConnection {
    enum State: UInt8 { case idle, connecting, open, closed }
    var fd: Int32 = -1
    var state: State = .idle
    var wantsOutput = false
    /// Write side shut down (stream end).
    var shutDown = false
    /// Owed nothing more: write side shut, reading to EOF so that bytes the server sends
    /// beyond the echo are caught too.
    var finishing = false
    /// Pattern key (from the global connection index).
    var key: UInt64 = 0
    var connectStarted: Int64 = 0
    /// pingpong: when the current message started.
    var messageStarted: Int64 = 0
    var sent: UInt64 = 0
    var received: UInt64 = 0
    var goal: UInt64 = 0
    /// rate: the warm-up backlog this connection dropped at the window's start.
    var skip = RateSkip()
}

final class EventWorker: @unchecked Sendable {
    // @unchecked: created on the main thread, then used only by the worker thread until joined.

    enum Phase { case connecting, waiting, running, draining, done }

    let options: LoadOptions
    let control: RunControl
    let first: Int
    let count: Int
    let live: LiveCounters
    private(set) var tally = Tally()

    private let epoll: Epoll
    private let timer: FileDescriptor
    private let conns: UnsafeMutablePointer<EventConnection>
    private let readBuffer: UnsafeMutableRawPointer
    private static let readBufferSize = 256 * 1024
    /// Most bytes, and most send calls, of one connection per loop turn (at least one send).
    private static let writeBudget = 1 << 20
    private static let writeCalls = 256
    private static let timerToken = UInt64.max
    private static let startToken = UInt64.max - 1
    private static let stopToken = UInt64.max - 2
    private static let releaseToken = UInt64.max - 3
    private static let rampToken = UInt64.max - 4
    /// Latencies (pingpong, rate), and the per-interval figures with `--interval`.
    private var sink = LatencySink()

    private var phase = Phase.connecting
    private let size: UInt64
    // Connecting.
    private var started: Int64 = 0
    private var nextToStart = 0
    private var oldestPending = 0
    private var inFlight = 0
    private var resolved = 0
    private var lastResolved: Int64 = 0
    // Running.
    private var ready: Int64 = 0
    /// `--start-at`: pingpong and stream traffic waits for the start (rather than running from
    /// each connect as warm-up), so that no byte goes out before the time asked for.
    private var trafficBegun: Bool
    private var window = MeasuredWindow(start: 0, end: 0)
    private var drainDeadline: Int64 = 0
    private var openCount = 0
    private var probing = false
    /// hold: probes sent and not yet answered (nor given up).
    private var awaitingProbes = 0
    /// hold: the next connection to probe (probes go out at most `connectConcurrency` at a time).
    private var nextProbe = 0
    /// hold: this worker's probes are resolved and counted in `control`.
    private var probesReported = false
    /// hold: the release came; held connections may close.
    private var released = false
    /// max: the ramp stop was acted on.
    private var rampHandled = false
    private var stopHandled = false
    /// This worker's connects are counted in `control` (once).
    private var reportedResolved = false
    // rate: the worker's part of the run's one schedule: its j-th message is message j / count
    // of its connection j % count.
    private var nextMessage: Int64 = 0
    /// Every message intended in the window is handed out (or given up as too late).
    private var rateDone = false
    /// The warm-up backlog was looked at (once, when the window opened).
    private var skippedWarmup = false
    private var rateSchedule = RateSchedule(start: 0, spacing: 0, connections: 1)
    // Totals not yet published to `live`.
    private var pending = ProgressSnapshot()

    init(options: LoadOptions, control: RunControl, first: Int, count: Int, live: LiveCounters) throws(SystemError) {
        self.options = options
        self.control = control
        self.first = first
        self.count = count
        self.live = live
        self.size = UInt64(options.size)
        epoll = try Epoll()
        let tfd = try syscall("timerfd_create") {
            timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK) | Int32(TFD_CLOEXEC))
        }
        timer = FileDescriptor(owning: tfd)
        conns = .allocate(capacity: max(count, 1))
        conns.initialize(repeating: EventConnection(), count: max(count, 1))
        readBuffer = .allocate(byteCount: Self.readBufferSize, alignment: 64)
        for i in 0..<count {
            conns[i].key = Pattern.key(forConnection: options.connectionIndexBase + first + i)
        }
        try epoll.add(timer.rawValue, events: .input, token: Self.timerToken)
        try epoll.add(control.startFD, events: .input, token: Self.startToken)
        try epoll.add(control.stopFD, events: .input, token: Self.stopToken)
        try epoll.add(control.releaseFD, events: .input, token: Self.releaseToken)
        try epoll.add(control.rampFD, events: .input, token: Self.rampToken)
        tally.requested = count
        trafficBegun = options.startAt == nil
    }

    deinit {
        for i in 0..<count where conns[i].fd >= 0 { closeNoRetry(conns[i].fd) }
        conns.deallocate()
        readBuffer.deallocate()
    }

    // MARK: - Loop

    func run() {
        let capacity = 512
        let events = UnsafeMutableBufferPointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        started = control.connectGate.wait()
        if count == 0 { phase = .done }
        while phase != .done {
            let now = monotonicNanoseconds()
            tick(now)
            publish()
            if phase == .done { break }
            let timeout = timeoutMilliseconds(monotonicNanoseconds())
            let n: Int
            do {
                n = try epoll._blockingWaitForEvents(into: events, timeoutMilliseconds: timeout)
            } catch {
                // The run cannot go on: a fault, so the run is not clean.
                tally.ioErrors[errnoName(error.errno), default: 0] += 1
                tally.noteFault("epoll_wait failed: \(error)")
                break
            }
            for e in 0..<n {
                let token = events[e].data.u64
                let flags = events[e].events
                if token == Self.timerToken {
                    var expirations: UInt64 = 0
                    _ = Glibc.read(timer.rawValue, &expirations, 8)
                    continue
                }
                if token >= Self.rampToken && token <= Self.startToken {
                    // Written once, never drained (every worker watches it): seen, so stop watching.
                    let fd: Int32
                    switch token {
                    case Self.startToken: fd = control.startFD
                    case Self.stopToken: fd = control.stopFD
                    case Self.releaseToken: fd = control.releaseFD
                    default: fd = control.rampFD
                    }
                    _ = try? epoll.delete(fd)
                    continue
                }
                service(Int(token), flags)
            }
        }
        // Whatever is still open at the end (an aborted loop) is closed, not leaked; and a worker
        // that never got to count its connects does so now, so the others are not left waiting.
        for i in 0..<count where conns[i].state == .open || conns[i].state == .connecting { close(i) }
        if !reportedResolved { control.resolved(count, now: monotonicNanoseconds()) }
        if options.mode == .hold && !probesReported { control.probed(count, now: monotonicNanoseconds()) }
        publish()
        if options.mode == .pingpong || options.mode == .rate { tally.latency = sink.histogram }
        if var recorder = sink.intervals { tally.intervals = recorder.finish(until: window.end) }
        tally.connectNanos = max(0, lastResolved - started)
        if options.mode != .hold { tally.measuredNanos = max(0, window.end - window.start) }
        if options.mode == .rate && ready != 0 {
            let base = global(0)
            tally.scheduled = rateSchedule.scheduled(connections: base..<base + count, in: window)
        }
    }

    /// Time-driven work, once per loop turn.
    private func tick(_ now: Int64) {
        if !stopHandled, control.stoppedAt != 0 { stop(control.stoppedAt, now) }
        switch phase {
        case .connecting:
            if options.ramp != nil && !rampHandled && control.rampGate.current != 0 { stopRamp(now) }
            startConnects(now)
            expireConnects(now)
            if resolved == count {
                phase = .waiting
                reportedResolved = true
                control.resolved(count, now: now)
                tick(now)
            }
        case .waiting:
            let start = control.startGate.current
            if start != 0 { becomeReady(start, now) }
        case .running:
            if !trafficBegun && now >= ready {
                trafficBegun = true
                for i in 0..<count where conns[i].state == .open { beginTraffic(i, now) }
            }
            switch options.mode {
            case .hold:
                if now >= window.end && !probing { startProbes(now) }
            case .pingpong, .stream:
                if now >= window.end { endTraffic(now) }
            case .rate:
                schedule(now)
                if now >= window.end && rateDone { endTraffic(now) }
            case .udp:
                preconditionFailure("udp runs in DatagramDriver")
            }
        case .draining:
            if options.mode == .hold && !released {
                holdProbes(now)
                return
            }
            if openCount == 0 {
                phase = .done
            } else if now >= drainDeadline {
                for i in 0..<count where conns[i].state == .open && conns[i].finishing {
                    close(i)  // owed nothing; the server just did not close: not a fault
                }
                for i in 0..<count where conns[i].state == .open {
                    fault { $0.recordEchoTimeout(connection: global(i), received: conns[i].received, sent: conns[i].sent) }
                    close(i)
                }
                phase = .done
            }
        case .done:
            break
        }
    }

    private func timeoutMilliseconds(_ now: Int64) -> Int32 {
        var next = now + 250_000_000  // publish progress at least four times a second
        switch phase {
        case .connecting:
            if nextToStart < count {
                next = min(next, control.connectTime(epoch: started, global: global(nextToStart)))
            }
            if oldestPending < nextToStart { next = min(next, conns[oldestPending].connectStarted + options.connectTimeout) }
        case .waiting:
            break  // the start eventfd wakes the loop
        case .running:
            if !(options.mode == .hold && probing) { next = min(next, window.end) }
            if !trafficBegun { next = min(next, ready) }
        case .draining:
            if !(probesReported && !released) { next = min(next, drainDeadline) }
        case .done:
            return 0
        }
        if next <= now { return 0 }
        return Int32(min((next - now + 999_999) / 1_000_000, 1000))
    }

    private func publish() {
        guard pending != ProgressSnapshot() else { return }
        if pending.established != 0 { live.established.add(pending.established, ordering: .relaxed) }
        if pending.failed != 0 { live.failed.add(pending.failed, ordering: .relaxed) }
        if pending.open != 0 { live.open.add(pending.open, ordering: .relaxed) }
        if pending.held != 0 { live.held.add(pending.held, ordering: .relaxed) }
        if pending.messages != 0 { live.messages.add(pending.messages, ordering: .relaxed) }
        if pending.bytesSent != 0 { live.bytesSent.add(pending.bytesSent, ordering: .relaxed) }
        if pending.bytesReceived != 0 { live.bytesReceived.add(pending.bytesReceived, ordering: .relaxed) }
        if pending.faults != 0 { live.faults.add(pending.faults, ordering: .relaxed) }
        pending = ProgressSnapshot()
    }

    @inline(__always) private func global(_ i: Int) -> Int { options.connectionIndexBase + first + i }

    // MARK: - Connecting

    private func startConnects(_ now: Int64) {
        while nextToStart < count && inFlight < options.connectConcurrency {
            if now < control.connectTime(epoch: started, global: global(nextToStart)) { break }
            startConnect(nextToStart, now)
            nextToStart += 1
        }
    }

    private func startConnect(_ i: Int, _ now: Int64) {
        let source = options.sources.isEmpty ? nil : options.sources[global(i) % options.sources.count]
        conns[i].connectStarted = now
        switch ClientSocket.open(to: options.target, from: source, blocking: false) {
        case .connected(let fd):
            conns[i].fd = fd
            connected(i, now)
        case .inProgress(let fd):
            conns[i].fd = fd
            conns[i].state = .connecting
            inFlight += 1
            do {
                try epoll.add(fd, events: .output, token: UInt64(i))
            } catch {
                connectFailed(i, errno: error.errno, now)  // undoes inFlight (state is .connecting)
            }
        case .failed(_, let e):
            connectFailed(i, errno: e, now)
        }
    }

    /// max: the ramp stops (here, or in another worker or process): no more connects; those in
    /// flight are abandoned (closed, neither established nor failed), and the run moves on to
    /// its start, hold and probes with what is open.
    private func stopRamp(_ now: Int64) {
        rampHandled = true
        for i in nextToStart..<count { conns[i].state = .closed }
        for i in 0..<nextToStart where conns[i].state == .connecting { close(i) }
        nextToStart = count
        resolved = count
    }

    /// max: why a failed connect means the server stopped taking connections (or the client
    /// could not open more).
    static func rampReason(_ e: Int32) -> String {
        switch e {
        case ECONNREFUSED: return "the server refused a connection (ECONNREFUSED)"
        case ETIMEDOUT: return "a connect timed out (ETIMEDOUT): the server stopped accepting"
        case ECONNRESET: return "the server reset a connection being opened (ECONNRESET)"
        case EADDRNOTAVAIL: return "client: out of source ports (EADDRNOTAVAIL); add --source addresses"
        case EMFILE, ENFILE: return "client: out of descriptors (\(errnoName(e)))"
        default: return "a connect failed (\(errnoName(e)))"
        }
    }

    private func connectFailed(_ i: Int, errno e: Int32, _ now: Int64) {
        if options.ramp != nil && !rampHandled { control.stopRamp(at: now, reason: Self.rampReason(e)) }
        if conns[i].state == .connecting { inFlight -= 1 }
        if conns[i].fd >= 0 { closeNoRetry(conns[i].fd) }
        conns[i].fd = -1
        conns[i].state = .closed
        tally.connectFailures[errnoName(e), default: 0] += 1
        pending.failed += 1
        resolved += 1
        lastResolved = now
    }

    private func expireConnects(_ now: Int64) {
        while oldestPending < nextToStart {
            let c = conns[oldestPending]
            if c.state == .connecting {
                guard now - c.connectStarted >= options.connectTimeout else { break }
                connectFailed(oldestPending, errno: ETIMEDOUT, now)
            }
            oldestPending += 1
        }
    }

    private func connected(_ i: Int, _ now: Int64) {
        if conns[i].state == .connecting {
            inFlight -= 1
            _ = try? epoll.delete(conns[i].fd)
        }
        conns[i].state = .open
        tally.established += 1
        tally.noteEstablished(at: now, epoch: started)
        pending.established += 1
        pending.open += 1
        openCount += 1
        resolved += 1
        lastResolved = now
        do {
            try epoll.add(conns[i].fd, events: [.input, .readHangup], token: UInt64(i))
        } catch {
            ioFailed(i, error.errno)
            return
        }
        if trafficBegun { beginTraffic(i, now) }
    }

    /// pingpong's first message, or stream's endless writes, on connection `i`.
    private func beginTraffic(_ i: Int, _ now: Int64) {
        switch options.mode {
        case .hold, .rate: break
        case .pingpong: startMessage(i, now)
        case .stream:
            conns[i].goal = UInt64.max
            write(i, now)
        case .udp:
            preconditionFailure("udp runs in DatagramDriver")
        }
    }

    /// The run starts at `start` (the same in every worker and process; `now` may be before it).
    private func becomeReady(_ start: Int64, _ now: Int64) {
        ready = start
        window.start = start + options.warmup
        window.end = window.start + options.duration
        if options.intervalLength > 0 && options.mode != .hold {
            sink.intervals = IntervalRecorder(window: window, length: options.intervalLength)
        }
        let s = control.stoppedAt
        if s != 0 { endWindow(at: s) }
        phase = .running
        if options.mode == .rate {
            rateSchedule = RateSchedule(start: ready, spacing: 1e9 / options.rate!, connections: options.totalConnections)
            schedule(now)
        }
        if openCount == 0 { phase = .done }
    }

    /// The run was told to stop at `s`: no more connects; the window ends at `s` (or never
    /// opens), so the usual end of traffic (or the hold's probes) follows at once.
    private func stop(_ s: Int64, _ now: Int64) {
        stopHandled = true
        nextToStart = count
        for i in 0..<count where conns[i].state == .connecting { close(i) }  // never resolved: not counted
        switch phase {
        case .connecting, .waiting:
            becomeReady(control.startGate.current != 0 ? control.startGate.current : s, now)
        case .running:
            endWindow(at: s)
        case .draining, .done:
            break
        }
    }

    /// Ends the measured window at `s` at the latest (empty if it had not begun).
    private func endWindow(at s: Int64) {
        window.end = min(window.end, s)
        window.start = min(window.start, window.end)
        sink.intervals?.endWindow(at: s)
    }

    // MARK: - Traffic

    private func startMessage(_ i: Int, _ now: Int64) {
        conns[i].goal = conns[i].sent + size
        conns[i].messageStarted = now
        write(i, now)
    }

    /// rate: hands out every message whose intended time has come, and arms the timer for the next.
    private func schedule(_ now: Int64) {
        let n = Int64(count)
        var handedOut = 0
        if !skippedWarmup && now >= window.start { skipWarmupBacklog() }
        while true {
            let k = Int(nextMessage % n)
            let intended = rateSchedule.intended(connection: global(k), message: UInt64(nextMessage / n))
            // Messages intended in the window go out even if late, unless later than the drain
            // timeout once the window is over (their echo would not be awaited): not offered.
            if intended >= window.end || (now >= window.end && now - intended > options.drainTimeout) {
                rateDone = true
                return
            }
            // Behind schedule by more than a batch: hand out the rest after the next epoll_wait
            // (the timer, armed in the past, fires at once) so reads and deadlines are not starved.
            if intended > now || handedOut >= 4096 {
                var spec = itimerspec()
                spec.it_value.tv_sec = Int(intended / 1_000_000_000)
                spec.it_value.tv_nsec = Int(intended % 1_000_000_000)
                _ = timerfd_settime(timer.rawValue, Int32(TFD_TIMER_ABSTIME), &spec, nil)
                return
            }
            let i = k
            nextMessage += 1
            handedOut += 1
            if conns[i].state == .open && !conns[i].finishing {
                if window.contains(now) { tally.issued += 1 }
                conns[i].goal += size
                if !conns[i].wantsOutput { write(i, now) }
            }
        }
    }

    /// The window opened: messages intended in the warm-up and not handed out yet are dropped
    /// (the schedule moves on to the first message intended in the window), so that a client past
    /// saturation measures what it does with the window's messages instead of the warm-up's
    /// backlog. Each connection records where its stream skips (`RateSkip`).
    private func skipWarmupBacklog() {
        skippedWarmup = true
        let n = Int64(count)
        func intended(_ j: Int64) -> Int64 {
            rateSchedule.intended(connection: global(Int(j % n)), message: UInt64(j / n))
        }
        guard intended(nextMessage) < window.start else { return }
        // The j-th message of this worker is message j / n of its connection j % n; intended
        // times grow with j. Start one round before the first message of connection 0 in the
        // window, then step.
        let m0 = Int64(rateSchedule.firstMessage(connection: global(0), atOrAfter: window.start))
        var target = max(nextMessage, (m0 - 1) * n)
        while intended(target) < window.start { target += 1 }
        // Messages connection k had handed out before j: j / n, plus one if k < j % n.
        func handed(_ k: Int64, _ j: Int64) -> Int64 { j / n + (k < j % n ? 1 : 0) }
        for k in 0..<n {
            let i = Int(k)
            let skipped = handed(k, target) - handed(k, nextMessage)
            guard skipped > 0, conns[i].state == .open else { continue }
            conns[i].skip = RateSkip(from: conns[i].goal, count: UInt64(skipped))
        }
        nextMessage = target
    }

    /// End of the measured period: no new messages; pingpong/rate connections that owe nothing
    /// close, stream connections shut down their write side and wait for the rest of the echo.
    private func endTraffic(_ now: Int64) {
        phase = .draining
        drainDeadline = now + options.drainTimeout
        for i in 0..<count where conns[i].state == .open {
            switch options.mode {
            case .stream:
                conns[i].goal = conns[i].sent
                setOutput(i, false)
                Glibc.shutdown(conns[i].fd, Int32(SHUT_WR))
                conns[i].shutDown = true
                if conns[i].received == conns[i].sent { finish(i) }
            default:
                if conns[i].received == conns[i].sent && conns[i].sent == conns[i].goal { finish(i) }
            }
        }
        if openCount == 0 { phase = .done }
    }

    private func startProbes(_ now: Int64) {
        probing = true
        tally.holdNanos = max(0, now - ready)
        phase = .draining
        drainDeadline = now + options.drainTimeout
        nextProbe = 0
        holdProbes(now)
    }

    /// Sends probes until `connectConcurrency` are in flight. All at once, a million 16-byte
    /// probes and their echoes took the kernel past net.ipv4.tcp_mem ("TCP: out of memory"):
    /// it pruned receive queues and 589,386 of 1,000,000 probes were not answered within 60 s.
    private func sendProbes(_ now: Int64) {
        while awaitingProbes < options.connectConcurrency && nextProbe < count {
            let i = nextProbe
            nextProbe += 1
            guard conns[i].state == .open else { continue }
            conns[i].goal = 16
            awaitingProbes += 1
            write(i, now)
        }
    }

    /// hold, between the probes and the release: answered connections stay open; once every
    /// probe is answered or the drain timeout ran out, this worker's share is reported, and at
    /// the release (every probe of the run resolved) the held connections finish.
    private func holdProbes(_ now: Int64) {
        if !probesReported && now < drainDeadline { sendProbes(now) }
        if !probesReported && ((awaitingProbes == 0 && nextProbe >= count) || now >= drainDeadline) {
            // Unanswered: probed and not answered, or (the deadline came first) never probed.
            for i in 0..<count where conns[i].state == .open && (conns[i].goal == 0 || conns[i].received < conns[i].goal) {
                if options.ramp != nil {
                    tally.unanswered += 1  // max: the server holds no more; not an echo fault
                } else {
                    fault { $0.recordEchoTimeout(connection: global(i), received: conns[i].received, sent: conns[i].sent) }
                }
                close(i)
            }
            nextProbe = count
            probesReported = true
            control.probed(count, now: now)
        }
        if probesReported && !released && control.releaseGate.current != 0 {
            released = true
            drainDeadline = now + options.drainTimeout
            for i in 0..<count where conns[i].state == .open { finish(i) }
            if openCount == 0 { phase = .done }
        }
    }

    /// Writes towards `goal` until the kernel pushes back, or this turn's budget is spent: small
    /// messages fill the socket buffers (megabytes both ways) only after many thousand sends, and
    /// a loop that long would keep reads, timers and the window's clock (`now`) waiting. Past the
    /// budget the connection stays armed for output, and level-triggered epoll brings it back.
    private func write(_ i: Int, _ now: Int64) {
        let fd = conns[i].fd
        var budget = Self.writeBudget
        var calls = Self.writeCalls
        while conns[i].sent < conns[i].goal {
            if budget <= 0 || calls <= 0 {
                setOutput(i, true)
                return
            }
            var want = Int(min(conns[i].goal - conns[i].sent, UInt64(Pattern.maxChunk)))
            // One message of --size per call (the rest of a partly sent one first): stream writes
            // are messages of --size, and rate messages queued behind backpressure are not merged.
            want = min(want, Int(size - conns[i].sent % size))
            if want > tally.largestWrite { tally.largestWrite = want }
            switch Pattern.send(fd, key: conns[i].key, position: conns[i].sent, count: want) {
            case .transferred(let n):
                budget -= n
                calls -= 1
                conns[i].sent += UInt64(n)
                tally.totalBytesSent += UInt64(n)
                pending.bytesSent += n
                if options.mode == .stream && now >= window.start && now < window.end {
                    tally.bytesSent += UInt64(n)
                    sink.intervals?.bytes(sent: n, at: now)
                }
            case .interrupted:
                continue
            case .wouldBlock:
                setOutput(i, true)
                return
            case .failed(let e):
                ioFailed(i, e)
                return
            case .endOfStream:
                return  // not a send outcome
            }
        }
        setOutput(i, false)
    }

    private func setOutput(_ i: Int, _ on: Bool) {
        guard conns[i].wantsOutput != on, conns[i].state == .open else { return }
        conns[i].wantsOutput = on
        let events: Epoll.Events = on ? [.input, .readHangup, .output] : [.input, .readHangup]
        do {
            try epoll.modify(conns[i].fd, events: events, token: UInt64(i))
        } catch {
            ioFailed(i, error.errno)
        }
    }

    private func service(_ i: Int, _ flags: UInt32) {
        guard i < count else { return }
        let now = monotonicNanoseconds()
        switch conns[i].state {
        case .connecting:
            let err = ClientSocket.pendingError(conns[i].fd, hangup: flags & (CEchoShims_EPOLLERR | CEchoShims_EPOLLHUP) != 0)
            if err == 0 {
                connected(i, now)
            } else {
                connectFailed(i, errno: err, now)
            }
        case .open:
            if flags & (CEchoShims_EPOLLIN | CEchoShims_EPOLLRDHUP | CEchoShims_EPOLLHUP | CEchoShims_EPOLLERR) != 0 {
                read(i, now)
            }
            if conns[i].state == .open && flags & CEchoShims_EPOLLOUT != 0 { write(i, now) }
        case .idle, .closed:
            break  // a stale event for a connection closed earlier in this batch
        }
    }

    private func read(_ i: Int, _ now: Int64) {
        if conns[i].finishing {
            readToEOF(i)
            return
        }
        let fd = conns[i].fd
        while true {
            switch SocketIO.receive(fd, into: readBuffer, count: Self.readBufferSize) {
            case .transferred(let n):
                received(i, n, now)
                // Finishing connections have already read on (to EOF or EAGAIN) in finish().
                if conns[i].state != .open || conns[i].finishing || n < Self.readBufferSize { return }
            case .endOfStream:
                if serverClosedDuringRamp(i, now, "the server closed an open connection") { return }
                fault { $0.recordPeerClose(connection: global(i), received: conns[i].received, sent: conns[i].sent) }
                close(i)
                return
            case .interrupted:
                continue
            case .wouldBlock:
                return
            case .failed(let e):
                ioFailed(i, e)
                return
            }
        }
    }

    /// Verifies and accounts `n` bytes just read into `readBuffer`.
    @inline(__always)
    private func received(_ i: Int, _ n: Int, _ now: Int64) {
        let before = conns[i].received
        if before + UInt64(n) > conns[i].sent {
            fault { $0.recordOverrun(connection: global(i), received: before + UInt64(n), sent: conns[i].sent) }
            close(i)
            return
        }
        if let bad = Pattern.firstMismatch(readBuffer, count: n, key: conns[i].key, position: before) {
            let expected = Pattern.byte(key: conns[i].key, position: before + UInt64(bad))
            let got = readBuffer.load(fromByteOffset: bad, as: UInt8.self)
            fault { $0.recordMismatch(connection: global(i), position: before + UInt64(bad), got: got, expected: expected) }
            close(i)
            return
        }
        let after = before + UInt64(n)
        conns[i].received = after
        tally.totalBytesReceived += UInt64(n)
        pending.bytesReceived += n
        let inWindow = now >= window.start && now < window.end && phase == .running
        switch options.mode {
        case .hold:
            if probing && after == conns[i].goal {
                // Answered: stays open (no FIN) until the release, see holdProbes. The deadline
                // counts from the last answer: probes go out a window at a time.
                tally.held += 1
                pending.held += 1
                awaitingProbes -= 1
                drainDeadline = now + options.drainTimeout
            }
        case .stream:
            if inWindow {
                tally.bytesReceived += UInt64(n)
                sink.intervals?.bytes(received: n, at: now)
            }
            if conns[i].shutDown && after == conns[i].sent { finish(i) }
        case .pingpong:
            guard after == conns[i].goal else { return }
            pending.messages += 1
            if inWindow { tally.countMessage(size: options.size, latency: now - conns[i].messageStarted, at: now, into: &sink) }
            // Before the run starts (`connecting`, `waiting`), traffic already runs as warm-up.
            if phase == .connecting || phase == .waiting || (phase == .running && now < window.end) {
                startMessage(i, now)
            } else {
                finish(i)
            }
        case .rate:
            pending.messages += tally.countRateEchoes(
                connection: global(i), from: before, to: after, size: options.size, schedule: rateSchedule,
                skip: conns[i].skip, window: window, now: now, into: &sink)
            if phase == .draining && after == conns[i].goal { finish(i) }
        case .udp:
            preconditionFailure("udp runs in DatagramDriver")
        }
    }

    /// The connection was owed nothing more: shut the write side and wait for the server's EOF,
    /// reading meanwhile, so that bytes beyond the echo do not go unchecked.
    private func finish(_ i: Int) {
        guard conns[i].state == .open, !conns[i].finishing else { return }
        conns[i].finishing = true
        setOutput(i, false)
        if !conns[i].shutDown {
            Glibc.shutdown(conns[i].fd, Int32(SHUT_WR))
            conns[i].shutDown = true
        }
        readToEOF(i)
    }

    /// Reads a finishing connection: EOF closes it; any byte is one more than was sent.
    private func readToEOF(_ i: Int) {
        while conns[i].state == .open {
            switch SocketIO.receive(conns[i].fd, into: readBuffer, count: Self.readBufferSize) {
            case .transferred:
                fault { $0.recordTrailingBytes(connection: global(i), sent: conns[i].sent) }
                close(i)
                return
            case .endOfStream:
                close(i)
                return
            case .interrupted:
                continue
            case .wouldBlock:
                return
            case .failed:
                close(i)  // a reset after a complete echo loses nothing we sent
                return
            }
        }
    }

    private func ioFailed(_ i: Int, _ e: Int32) {
        if serverClosedDuringRamp(i, monotonicNanoseconds(), "the server reset an open connection (\(errnoName(e)))") { return }
        fault { $0.recordIOError(connection: global(i), errno: e) }
        close(i)
    }

    /// max: before the probes, an idle connection the server closes or resets is its way of
    /// refusing more: the ramp stops, and the connection counts as closed by the server, not as
    /// a fault. - Returns: whether it was that (and the connection is closed).
    private func serverClosedDuringRamp(_ i: Int, _ now: Int64, _ reason: String) -> Bool {
        guard options.ramp != nil, !probing, conns[i].sent == 0 else { return false }
        if !rampHandled { control.stopRamp(at: now, reason: reason) }
        tally.closedByServer += 1
        close(i)
        return true
    }

    /// Records one fault into the tally and the progress counters.
    @inline(__always)
    private func fault(_ record: (inout Tally) -> Void) {
        record(&tally)
        pending.faults += 1
        if sink.intervals != nil { sink.intervals!.fault(at: monotonicNanoseconds()) }
    }

    private func close(_ i: Int) {
        switch conns[i].state {
        case .open:
            if sink.intervals != nil { sink.intervals!.closed(at: monotonicNanoseconds()) }
            openCount -= 1
            pending.open -= 1
            if probing && !released && conns[i].goal > 0 {
                if conns[i].received < conns[i].goal {
                    awaitingProbes -= 1
                } else {
                    // Answered, but closed before the release: not open with the others.
                    tally.held -= 1
                    pending.held -= 1
                }
            }
        case .connecting:
            inFlight -= 1
        default: break
        }
        if conns[i].fd >= 0 { closeNoRetry(conns[i].fd) }
        conns[i].fd = -1
        conns[i].state = .closed
        conns[i].wantsOutput = false
        if phase == .draining && openCount == 0 { phase = .done }
    }
}
