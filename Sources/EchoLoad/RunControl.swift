// SPDX-License-Identifier: Apache-2.0
// One process's clock and barriers for a run, so that every worker thread and every process of
// a split run measure the same interval:
//
//   connect epoch ──(connects, at most --rate per second on one global schedule)──▶ ready
//   ──▶ start T ──(warm-up)──▶ [T + warmup, T + warmup + duration) measured ──▶ drain
//
// - connect epoch: when connection g (global index) may start connecting, at epoch + g/rate.
// - ready: every connection of this process is resolved (established or failed). A process
//   run alone starts at once (T = ready); a child of a split run says `ready` to its parent
//   and waits for `start`, which the parent sends once every child is ready, carrying one
//   absolute CLOCK_MONOTONIC time (the same clock in every process of the host).
// - stop: SIGINT/SIGTERM (or the parent's `stop`): the window ends early, the result is
//   partial and marked interrupted.
// - hold's probes: a connection whose probe came back stays open (no FIN, nothing closed) until
//   every probe of the run is resolved (`probed`, then `release`, through the parent for a
//   split run), so that no server can answer late probes with slots freed by early ones: each
//   held connection was open and answering at the release, all at one instant.
//
// Threads wait at `Gate`s; event workers, which must not block, watch two eventfds (`startFD`,
// `stopFD`), written once each and never drained, so they stay readable for every epoll
// instance that registers them (each worker deletes them from its epoll after seeing them).
import CEchoShims
import EchoCore
import Glibc
import Synchronization

final class RunControl: Sendable {
    let options: LoadOptions
    /// Opens with the connect epoch.
    let connectGate = Gate()
    /// Opens with the start time T (or the stop time, if stopped before starting).
    let startGate = Gate()
    /// Opens with the time the run was told to stop.
    let stopGate = Gate()
    /// Opens with the time this process's last connect resolved.
    let readyGate = Gate()
    /// Readable once `startGate` is open.
    let startFD: Int32
    /// Readable once `stopGate` is open.
    let stopFD: Int32
    /// hold: opens once every probe of the run is resolved (answered or given up).
    let releaseGate = Gate()
    /// Readable once `releaseGate` is open.
    let releaseFD: Int32
    /// max: opens with the time the connect ramp was told to stop.
    let rampGate = Gate()
    /// Readable once `rampGate` is open.
    let rampFD: Int32
    /// max: why the ramp stopped (the first reason given), for the report.
    let rampReason = Locked<String?>(nil)
    private let probedCount = Atomic<Int>(0)
    /// The signal that stopped the run (0: none, or told to stop by the parent without one).
    let stopSignal = Atomic<Int32>(0)
    /// Whether the parent starts the run (a child of a split run) or this process does.
    let startsAlone: Bool
    private let resolvedCount = Atomic<Int>(0)
    /// `--start-at` on this host's CLOCK_MONOTONIC (nil: none).
    let startAtMonotonic: Int64?

    /// - Parameter startsAlone: true for a process run alone: connects start now, traffic as
    ///   soon as every connect resolved.
    init(options: LoadOptions, startsAlone: Bool) throws(LoadError) {
        self.options = options
        self.startsAlone = startsAlone
        var fds: [Int32] = []
        for _ in 0..<4 {
            let fd = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
            guard fd >= 0 else {
                let e = errno
                fds.forEach(closeNoRetry)
                throw .system("echoload: eventfd: \(SystemError("eventfd", errno: e))")
            }
            fds.append(fd)
        }
        startFD = fds[0]
        stopFD = fds[1]
        releaseFD = fds[2]
        rampFD = fds[3]
        startAtMonotonic = options.startAt.map { WallClock.monotonic(fromWall: $0) }
        if startsAlone { connectGate.open(monotonicNanoseconds()) }
    }

    deinit {
        closeNoRetry(startFD)
        closeNoRetry(stopFD)
        closeNoRetry(releaseFD)
        closeNoRetry(rampFD)
    }

    /// hold: `n` more of this process's connections have their probe resolved (answered, given
    /// up, or never connected); the last one releases them (alone) or tells the parent.
    func probed(_ n: Int, now: Int64) {
        guard n > 0 else { return }
        if probedCount.add(n, ordering: .acquiringAndReleasing).newValue == options.connections {
            if startsAlone {
                release(at: now)
            } else {
                writeAll(1, ChildProtocol.message("probed", at: now))
            }
        }
    }

    /// Opens the release gate: held connections may close.
    func release(at t: Int64) {
        if releaseGate.open(t) { Self.signal(releaseFD) }
    }

    /// max: stops the connect ramp at `t` because of `reason` (the first reason wins). A child
    /// tells its parent, which stops every process's ramp.
    func stopRamp(at t: Int64, reason: String) {
        let first = rampReason.withLock { r -> Bool in
            guard r == nil else { return false }
            r = reason
            return true
        }
        if first && !startsAlone {
            writeAll(1, JSONValue.object([("type", .string("ramp")), ("at", .int(t)), ("reason", .string(reason))]).text + "\n")
        }
        openRamp(at: t)
    }

    /// Opens the ramp gate (the parent's `ramp` message, or `stopRamp`).
    func openRamp(at t: Int64) {
        if rampGate.open(t) { Self.signal(rampFD) }
    }

    /// Counts `n` more of this process's connects as resolved; the last one makes the process ready.
    func resolved(_ n: Int, now: Int64) {
        guard n > 0 else { return }
        if resolvedCount.add(n, ordering: .acquiringAndReleasing).newValue == options.connections {
            readyGate.open(now)
            if startsAlone {
                startAlone(now: now)
            } else {
                writeAll(1, ChildProtocol.message("ready", at: now))
            }
        }
    }

    /// A process run alone starts once every connect resolved, or at `--start-at` if that is
    /// later: the gate opens at that time (a thread sleeps until then), so no traffic flows before.
    private func startAlone(now: Int64) {
        guard let at = startAtMonotonic, at > now else { return start(at: now) }
        do {
            try JoinableThread.detach(name: "echoload-start") { [self] in
                if stopGate.sleep(until: at) { start(at: at) }
            }
        } catch {
            start(at: max(now, at))  // no thread: start with the time set, early traffic is warm-up
        }
    }

    /// Opens the start gate with `t`.
    func start(at t: Int64) {
        if startGate.open(t) { Self.signal(startFD) }
    }

    /// Ends the run early at `s` (because of `signal`, if non-zero). Every wait ends.
    func stop(at s: Int64, signal: Int32) {
        if signal != 0 { _ = stopSignal.compareExchange(expected: 0, desired: signal, ordering: .relaxed) }
        if stopGate.open(s) { Self.signal(stopFD) }
        connectGate.open(s)
        start(at: s)
        openRamp(at: s)
        release(at: s)
    }

    /// The stop time, or 0 while the run is not stopped.
    @inline(__always) var stoppedAt: Int64 { stopGate.current }

    /// Connection `g`'s (global index) earliest connect time: the epoch, plus g/rate in `hold`
    /// with `--rate` (one schedule over every process).
    func connectTime(epoch: Int64, global g: Int) -> Int64 {
        guard options.mode == .hold, let r = options.rate else { return epoch }
        return epoch + Int64(Double(g) * 1e9 / r)
    }

    /// The measured part of `window` once the run has ended: up to the stop time if it stopped.
    func measured(_ window: MeasuredWindow) -> Int64 {
        let s = stoppedAt
        let end = s != 0 ? min(window.end, s) : window.end
        return max(0, end - window.start)
    }

    private static func signal(_ fd: Int32) {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }
}

/// SIGINT and SIGTERM, taken off the default disposition and read from a signalfd, so that a run
/// stops cleanly and still reports. Blocked before any thread starts (threads inherit the mask);
/// a second signal ends the process at once (exit 128 + signal).
enum StopSignals {
    static let watched: [Int32] = [SIGINT, SIGTERM]

    /// Blocks the signals and returns a signalfd for them (or -1 if none could be made: then the
    /// signals are left as they were).
    static func install() -> Int32 {
        var mask = sigset_t()
        sigemptyset(&mask)
        for s in watched { sigaddset(&mask, s) }
        let fd = signalfd(-1, &mask, Int32(SFD_NONBLOCK) | Int32(SFD_CLOEXEC))
        guard fd >= 0 else { return -1 }
        pthread_sigmask(SIG_BLOCK, &mask, nil)
        return fd
    }

    /// Reads one pending signal from `fd`. - Returns: its number, or 0 if none.
    static func next(_ fd: Int32) -> Int32 {
        var info = signalfd_siginfo()
        let n = Glibc.read(fd, &info, MemoryLayout<signalfd_siginfo>.size)
        return n == MemoryLayout<signalfd_siginfo>.size ? Int32(bitPattern: info.ssi_signo) : 0
    }

    /// Name for reports: `SIGINT`, `SIGTERM`.
    static func name(_ s: Int32) -> String {
        switch s {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        default: return "signal \(s)"
        }
    }
}

/// Newline-terminated lines from a descriptor (a child's stdin), read with read(2).
final class LineReader: @unchecked Sendable {
    // @unchecked: used by one thread at a time (the child's main thread reads the spec, then
    // hands the reader to its control thread).
    let fd: Int32
    private var buffer: [UInt8] = []

    init(fd: Int32) { self.fd = fd }

    /// The next line without its newline, or nil at EOF (or on a read error).
    func next() -> String? {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return line
            }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n > 0 { buffer.append(contentsOf: chunk[0..<n]); continue }
            if n < 0 && errno == EINTR { continue }
            if buffer.isEmpty { return nil }
            let line = String(decoding: buffer, as: UTF8.self)
            buffer.removeAll()
            return line
        }
    }
}
