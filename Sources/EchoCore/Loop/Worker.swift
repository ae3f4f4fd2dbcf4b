// SPDX-License-Identifier: Apache-2.0
// The event model's worker: one thread, one epoll instance, its own connections.
//
// Every worker registers every listening socket with EPOLLEXCLUSIVE, so a new connection wakes
// one idle worker rather than all of them, and that worker accepts until EAGAIN. A connection
// stays with the worker that accepted it for its whole life: no locks on the echo path.
//
// Echo path (level-triggered): EPOLLIN -> recv into the worker's buffer -> send. If send takes
// less than was read, the rest is copied into a pooled buffer, the connection's interest becomes
// EPOLLOUT only, and it is not read again until the rest has gone out. Nothing is allocated per
// message; an idle connection owns 32 bytes in the worker's table.
//
// UDP sockets (ListenDatagram=) are in every worker's epoll set too, with EPOLLEXCLUSIVE; a
// worker woken for one runs its `DatagramEcho` (recvmmsg, filters, sendmmsg) on it.
import CEchoShims
import Glibc
import Logging

/// Size of each worker's read buffer, and so the most a connection ever holds in user space.
public let echoBufferSize = 64 * 1024

/// During a graceful stop, a connection is given its FIN once no data has arrived on it for this
/// long (milliseconds): bytes a client wrote before the stop may still be in flight or in its
/// send buffer, and closing the write side at the first empty read would leave them unechoed.
public let drainQuietPeriodMilliseconds: Int32 = 250

final class Worker: @unchecked Sendable {
    // @unchecked: after `start`, every field but the immutable ones and the atomics in
    // `counters`/`control` is touched only by this worker's thread.

    let index: Int
    let counters: WorkerCounters
    private let control: PoolControl
    private let epoll: Epoll
    /// Wakes this worker for stop, limit and reload changes.
    let wakeup: EventFD
    private let listeners: [Int32]
    /// UDP sockets, served by `datagram`.
    private let datagramSockets: [Int32]
    private let datagram: DatagramEcho?
    /// Wake-up descriptors of all workers, for resuming those paused at the connection limit.
    private var peers: [Int32] = []
    private var logger: Logger
    /// The service's per-source table (nil in pool tests without one) and where accept puts the
    /// peer's address for it.
    private let sources: SourceTable?
    private let peerAddress: UnsafeMutablePointer<sockaddr_storage>

    // The worker's own state is touched only by its thread, so Swift's dynamic exclusivity
    // checks (swift_beginAccess on every access, ~5% of the echo path in callgrind) buy nothing.
    @exclusivity(unchecked) private var table = ConnectionTable()
    private let readBuffer: UnsafeMutableRawPointer
    @exclusivity(unchecked) private var bufferPool: [UnsafeMutableRawPointer] = []
    private static let bufferPoolLimit = 16
    /// Draining connections that may still have unread input but produced no EAGAIN yet.
    @exclusivity(unchecked) private var drainAgain: [Int32] = []

    // Accepting state; `reconcileListening` makes the epoll registrations match.
    @exclusivity(unchecked) private var listenersRegistered = false
    @exclusivity(unchecked) private var pausedAtLimit = false
    @exclusivity(unchecked) private var backoff: AcceptBackoff
    @exclusivity(unchecked) private var draining = false
    private var drainStarted: Int64 = 0

    // Totals kept in plain variables and published once per batch.
    @exclusivity(unchecked) private var accepted: UInt64 = 0
    @exclusivity(unchecked) private var bytesEchoed: UInt64 = 0
    @exclusivity(unchecked) private var turns: UInt64 = 0
    private var warning = RateLimitedWarning()

    // IdleTimeoutSec= and SendTimeoutSec= (ConnectionTimeouts.swift): a sweep every interval.
    @exclusivity(unchecked) private var lastSweep: Int64 = 0
    @exclusivity(unchecked) private var timedOutIdle: [Int32] = []
    @exclusivity(unchecked) private var timedOutStalled: [Int32] = []

    private static let listenerTag: UInt64 = 1 << 63
    private static let wakeupTag: UInt64 = 1 << 62
    /// With `listenerTag`: a UDP socket rather than a listener.
    private static let datagramTag: UInt64 = 1 << 16

    init(
        index: Int, listeners: [Int32], datagramSockets: [Int32] = [], datagramPolicy: DatagramPolicy? = nil,
        control: PoolControl, logger: Logger, sources: SourceTable? = nil
    ) throws(SystemError) {
        self.index = index
        self.sources = sources
        peerAddress = .allocate(capacity: 1)
        peerAddress.initialize(to: sockaddr_storage())
        self.listeners = listeners
        self.datagramSockets = datagramPolicy == nil ? [] : datagramSockets
        self.control = control
        self.counters = WorkerCounters()
        self.epoll = try Epoll()
        self.wakeup = try EventFD()
        var logger = logger
        logger[metadataKey: "worker.index"] = "\(index)"
        self.logger = logger
        self.backoff = AcceptBackoff(logger: logger)
        self.readBuffer = .allocate(byteCount: echoBufferSize, alignment: 16)
        if let datagramPolicy, !datagramSockets.isEmpty {
            datagram = try DatagramEcho(policy: datagramPolicy, logger: logger)
        } else {
            datagram = nil
        }
        bufferPool.reserveCapacity(Self.bufferPoolLimit)
        drainAgain.reserveCapacity(64)
        try epoll.add(wakeup.descriptor.rawValue, events: .input, token: Self.wakeupTag)
        for (i, fd) in self.datagramSockets.enumerated() {
            try epoll.add(fd, events: [.input, .exclusive], token: Self.listenerTag | Self.datagramTag | UInt64(i))
        }
        try reconcileListening()
    }

    deinit {
        // Only after the loop failed: close what is left without waking peers, whose eventfds
        // may be closed (and their numbers reused) by now.
        for slot in table.usedSlots() {
            releasePending(table.entry(slot))
            table.close(slot)
        }
        readBuffer.deallocate()
        peerAddress.deallocate()
        for b in bufferPool { b.deallocate() }
    }

    func setPeers(_ peers: [Int32]) { self.peers = peers }

    // MARK: - The loop

    /// Runs until a stop has drained every connection or hit the stop deadline.
    func run() {
        let capacity = 256
        let events = UnsafeMutableBufferPointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while true {
            turns &+= 1
            counters.heartbeat.store(turns, ordering: .relaxed)  // a plain store: no locked add
            let timeout = nextTimeout()
            let n: Int
            do {
                n = try epoll._blockingWaitForEvents(into: events, timeoutMilliseconds: timeout)
            } catch {
                logger.critical("epoll_wait failed; worker stops", metadata: ["error": "\(error)"])
                break
            }
            for i in 0..<n {
                let event = events[i]
                let token = event.data.u64
                if token & Self.listenerTag != 0 {
                    if token & Self.datagramTag != 0 {
                        datagram?.serve(datagramSockets[Int(token & 0xFFFF)])
                    } else {
                        acceptConnections(from: listeners[Int(token & 0xFFFF)])
                    }
                } else if token & Self.wakeupTag != 0 {
                    wakeup.drain()
                    handleControlChange()
                } else {
                    let slot = Int32(truncatingIfNeeded: token & 0xFFFF_FFFF)
                    let generation = UInt32(truncatingIfNeeded: token >> 32)
                    if let entry = table.entry(slot, generation: generation) {
                        service(slot, entry)
                    }
                }
            }
            if !drainAgain.isEmpty { retryDraining() }
            if !draining && table.count > 0 { sweepTimeoutsIfDue() }
            publish()
            if backoff.isActive || draining {
                if tick() { break }
            }
        }
        publish()
    }

    private func nextTimeout() -> Int32 {
        // Wake regularly so the heartbeat shows the worker alive even when idle.
        var timeout = Int64(control.heartbeatMilliseconds.load(ordering: .relaxed))
        if !drainAgain.isEmpty { return 0 }
        if table.count > 0, let sweep = ConnectionTimeouts.shared.sweepIntervalMilliseconds() {
            timeout = min(timeout, Int64(sweep))
        }
        if !backoff.isActive && !draining { return Int32(timeout) }  // the common case: no clock read
        let now = monotonicNanoseconds()
        if let until = backoff.until { timeout = min(timeout, max(0, (until - now) / 1_000_000 + 1)) }
        if draining {
            let deadline = control.stopDeadline.load(ordering: .relaxed)
            timeout = min(timeout, max(0, (deadline - now) / 1_000_000 + 1), 50)
        }
        return Int32(timeout)
    }

    /// Time-driven work: end of an accept back-off, the stop deadline.
    /// - Returns: true when the worker is done.
    private func tick() -> Bool {
        let now = monotonicNanoseconds()
        if backoff.expire(now: now) { try? reconcileListening() }
        if draining {
            if table.count == 0 { return true }
            finishQuietConnections(now: now)
            if now >= control.stopDeadline.load(ordering: .relaxed) {
                let left = table.count
                for slot in table.usedSlots() { close(slot) }
                logger.warning(
                    "stop timeout reached; closed remaining connections",
                    metadata: ["connections.closed": "\(left)"])
                return true
            }
        }
        return false
    }

    private func publish() {
        counters.accepted.store(accepted, ordering: .relaxed)
        counters.bytesEchoed.store(bytesEchoed, ordering: .relaxed)
        counters.open.store(table.count, ordering: .relaxed)
        datagram?.publish()
    }

    // MARK: - Accepting

    /// Registers or unregisters the listeners so that the worker accepts exactly when it should:
    /// not stopping, not at the connection limit, not backing off after EMFILE.
    private func reconcileListening() throws(SystemError) {
        let want = !draining && !pausedAtLimit && !backoff.isActive
        guard want != listenersRegistered else { return }
        for (i, fd) in listeners.enumerated() {
            if want {
                try epoll.add(fd, events: [.input, .exclusive], token: Self.listenerTag | UInt64(i))
            } else {
                try epoll.delete(fd)
            }
        }
        listenersRegistered = want
    }

    private func acceptConnections(from listener: Int32) {
        // A stale event for a listener unregistered earlier in this batch.
        guard listenersRegistered else { return }
        while true {
            guard control.reserveConnection() else {
                pauseAtLimit()
                return
            }
            let result: IOResult<Int32>
            do {
                result = try Socket.accept(listener, peer: sources == nil ? nil : peerAddress)
            } catch {
                releaseSlot()
                if handleAcceptError(error) { continue }
                return
            }
            switch result {
            case .wouldBlock:
                releaseSlot()
                return
            case .processed(let fd):
                var ticket = SourceTicket.untracked
                if let sources {
                    // A per-source limit refuses by closing at once, before any echo; the
                    // table counts it and the daemon logs the counts.
                    switch sources.admit(peer: peerAddress, now: monotonicNanoseconds()) {
                    case .admitted(let admitted):
                        ticket = admitted
                    case .refused:
                        closeNoRetry(fd)
                        releaseSlot()
                        continue
                    }
                }
                let slot = table.allocate(fd: fd)
                table.entry(slot).pointee.source = ticket
                let generation = table.entry(slot).pointee.generation
                do {
                    try epoll.add(fd, events: .input, token: Self.token(slot, generation))
                } catch {
                    warnRateLimited("cannot watch new connection; closing it", error)
                    close(slot)
                    continue
                }
                accepted &+= 1
            }
        }
    }

    /// - Returns: true to go on accepting.
    private func handleAcceptError(_ error: SystemError) -> Bool {
        if Socket.isTransientAcceptError(error.errno) { return true }
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: accepting again at once would spin. Stop polling the
        // listeners for a second; connections wait in the kernel's backlog meanwhile.
        backoff.pause("accept failed; pausing accepts for 1s", error)
        counters.acceptBackoffs.store(backoff.count, ordering: .relaxed)
        try? reconcileListening()
        return false
    }

    private func pauseAtLimit() {
        guard !pausedAtLimit else { return }
        pausedAtLimit = true
        control.pausedWorkers.add(1, ordering: .sequentiallyConsistent)
        try? reconcileListening()
        // A connection may have closed between the failed reservation and the count above,
        // without anyone to wake us: look again now.
        if control.hasRoom { resumeIfRoom() }
    }

    private func resumeIfRoom() {
        guard pausedAtLimit, control.hasRoom else { return }
        pausedAtLimit = false
        control.pausedWorkers.subtract(1, ordering: .sequentiallyConsistent)
        try? reconcileListening()
    }

    private func handleControlChange() {
        if index == 0 && control.hangRequested.load(ordering: .relaxed) {
            // Test-only ([Debug] WatchdogTestTrigger=yes): stand for a worker stuck in a bug.
            logger.warning("worker hanging on request (WatchdogTestTrigger)")
            while true { sleep(3600) }
        }
        if control.stopping.load(ordering: .acquiring) && !draining {
            beginDraining()
        }
        resumeIfRoom()
    }

    // MARK: - Echo

    @inline(__always)
    private static func token(_ slot: Int32, _ generation: UInt32) -> UInt64 {
        UInt64(generation) << 32 | UInt64(UInt32(bitPattern: slot))
    }

    /// Handles readiness of a connection, whatever the event bits: the next read or write says
    /// what happened (data, EOF, reset).
    @inline(__always)
    private func service(_ slot: Int32, _ c: UnsafeMutablePointer<Connection>) {
        if c.pointee.pending != nil {
            flushPending(slot, c)
            return
        }
        switch c.pointee.phase {
        case .echoing: echoOnce(slot, c)
        case .draining: drainStep(slot, c)
        case .lingering: discardInput(slot, c)
        }
    }

    /// One read and its echo.
    /// - Returns: whether the data was echoed, the socket had none, the rest is pending, or the
    ///   connection was closed.
    @inline(__always)
    @discardableResult
    private func echoOnce(_ slot: Int32, _ c: UnsafeMutablePointer<Connection>) -> EchoOutcome {
        switch SocketIO.receive(c.pointee.fd, into: readBuffer, count: echoBufferSize) {
        case .transferred(let n):
            c.pointee.link = 0  // progress: the timeout sweep starts counting again
            return writeBack(slot, c, count: n)
        case .wouldBlock, .interrupted:
            return .wouldBlock
        case .endOfStream:
            // The peer shut down its sending side; everything it sent has been echoed (a
            // connection is never read while bytes are pending), so close now: FIN follows the data.
            close(slot)
            return .closed
        case .failed:
            // ECONNRESET, ETIMEDOUT, ...: the peer is gone.
            close(slot)
            return .closed
        }
    }

    enum EchoOutcome { case echoed, wouldBlock, pending, closed }

    @inline(__always)
    private func writeBack(_ slot: Int32, _ c: UnsafeMutablePointer<Connection>, count n: Int) -> EchoOutcome {
        let fd = c.pointee.fd
        let written: Int
        switch SocketIO.send(fd, from: readBuffer, count: n, flags: Int32(MSG_DONTWAIT)) {
        case .transferred(let w):
            if w == n {
                bytesEchoed &+= UInt64(n)
                return .echoed
            }
            written = w
        case .wouldBlock, .interrupted:
            written = 0
        case .endOfStream, .failed:
            close(slot)
            return .closed
        }
        bytesEchoed &+= UInt64(written)
        // Keep the rest (at most one read's worth) and stop reading until it has gone out.
        let rest = n - written
        let buffer = bufferPool.popLast() ?? .allocate(byteCount: echoBufferSize, alignment: 16)
        buffer.copyMemory(from: readBuffer + written, byteCount: rest)
        c.pointee.pending = buffer
        c.pointee.pendingStart = 0
        c.pointee.pendingEnd = Int32(rest)
        do {
            try epoll.modify(fd, events: .output, token: Self.token(slot, c.pointee.generation))
        } catch {
            warnRateLimited("cannot wait for a connection to drain; closing it", error)
            close(slot)
            return .closed
        }
        return .pending
    }

    private func flushPending(_ slot: Int32, _ c: UnsafeMutablePointer<Connection>) {
        let fd = c.pointee.fd
        let start = Int(c.pointee.pendingStart)
        let end = Int(c.pointee.pendingEnd)
        let written: Int
        switch SocketIO.send(fd, from: c.pointee.pending! + start, count: end - start, flags: Int32(MSG_DONTWAIT)) {
        case .transferred(let w):
            written = w
        case .wouldBlock, .interrupted:
            return
        case .endOfStream, .failed:
            close(slot)
            return
        }
        bytesEchoed &+= UInt64(written)
        c.pointee.link = 0  // progress: the timeout sweep starts counting again
        if start + written < end {
            c.pointee.pendingStart = Int32(start + written)
            return
        }
        releasePending(c)
        if c.pointee.phase == .draining { c.pointee.link = drainClock() }
        do {
            try epoll.modify(fd, events: .input, token: Self.token(slot, c.pointee.generation))
        } catch {
            warnRateLimited("cannot resume reading a connection; closing it", error)
            close(slot)
            return
        }
        if c.pointee.phase == .draining { drainStep(slot, c) }
    }

    private func releasePending(_ c: UnsafeMutablePointer<Connection>) {
        guard let buffer = c.pointee.pending else { return }
        c.pointee.pending = nil
        c.pointee.pendingStart = 0
        c.pointee.pendingEnd = 0
        if bufferPool.count < Self.bufferPoolLimit {
            bufferPool.append(buffer)
        } else {
            buffer.deallocate()
        }
    }

    private func close(_ slot: Int32) {
        releasePending(table.entry(slot))
        sources?.release(table.entry(slot).pointee.source)
        // close(2) also removes the descriptor from this epoll instance (it is not dup'ed).
        table.close(slot)
        releaseSlot()
    }

    /// Returns a connection slot to the pool and wakes the workers if any is paused at the
    /// limit: on every path that gives a slot back (a close, but also an accept that found the
    /// queue empty or failed after the slot was reserved), or a paused worker could wait for
    /// good while there is room.
    private func releaseSlot() {
        if control.releaseConnection() {
            for peer in peers { EventFD.add(1, to: peer) }
        }
    }

    // MARK: - Timeouts

    /// Sweeps the connections for IdleTimeoutSec= and SendTimeoutSec= when an interval has
    /// passed (one coarse clock read per loop turn while there are connections) and closes those
    /// past their timeout; the daemon logs the counts (`ConnectionTimeouts.LogState`).
    private func sweepTimeoutsIfDue() {
        let timeouts = ConnectionTimeouts.shared
        guard let interval = timeouts.sweepIntervalMilliseconds() else { return }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
        let nowNanos = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
        guard nowNanos - lastSweep >= Int64(interval) * 1_000_000 else { return }
        lastSweep = nowNanos
        func sweeps(_ ms: Int) -> Int32 { ms == 0 ? 0 : Int32(clamping: (ms + interval - 1) / interval) }
        table.sweepTimeouts(
            idleSweeps: sweeps(timeouts.idleMilliseconds), sendSweeps: sweeps(timeouts.sendMilliseconds),
            idle: &timedOutIdle, stalled: &timedOutStalled)
        guard !timedOutIdle.isEmpty || !timedOutStalled.isEmpty else { return }
        for slot in timedOutIdle { close(slot) }
        timeouts.countIdle(UInt64(timedOutIdle.count))
        var stalled: UInt64 = 0
        for slot in timedOutStalled {
            // EPOLLOUT comes only once a third of the send buffer is free, so a peer that reads
            // slowly can drain it for longer than the timeout without one: try the send before
            // calling the connection stalled. Any byte taken is progress (flushPending resets
            // the count); none means the peer's window really stayed shut.
            let c = table.entry(slot)
            let generation = c.pointee.generation
            flushPending(slot, c)
            guard let still = table.entry(slot, generation: generation), still.pointee.link != 0,
                still.pointee.pending != nil
            else { continue }
            close(slot)
            stalled += 1
        }
        timeouts.countSend(stalled)
        timedOutIdle.removeAll(keepingCapacity: true)
        timedOutStalled.removeAll(keepingCapacity: true)
    }

    // MARK: - Graceful stop

    private func beginDraining() {
        draining = true
        drainStarted = monotonicNanoseconds()
        try? reconcileListening()
        // A stop ends the UDP echo at once: there is no exchange to finish.
        for fd in datagramSockets { try? epoll.delete(fd) }
        for slot in table.usedSlots() {
            let c = table.entry(slot)
            guard c.pointee.phase == .echoing else { continue }
            c.pointee.phase = .draining
            c.pointee.link = 0
            if c.pointee.pending == nil { drainStep(slot, c) }
        }
        publish()
    }

    /// Milliseconds since the stop began.
    private func drainClock() -> Int32 {
        Int32(clamping: (monotonicNanoseconds() - drainStarted) / 1_000_000)
    }

    /// Echoes what is readable now (bounded per call so one busy peer cannot starve the others),
    /// noting when data last arrived; `finishQuietConnections` closes the write side once the
    /// peer has gone quiet.
    private func drainStep(_ slot: Int32, _ c: UnsafeMutablePointer<Connection>) {
        for _ in 0..<16 {
            switch echoOnce(slot, c) {
            case .echoed:
                c.pointee.link = drainClock()
                continue
            case .pending, .closed, .wouldBlock:
                return
            }
        }
        // Still data after 16 reads: look again after this batch, as epoll may not report the
        // connection again if the last read emptied it exactly.
        drainAgain.append(slot)
    }

    /// Shuts the write side of draining connections that have nothing pending and have been
    /// quiet for the quiet period, and moves them to lingering.
    private func finishQuietConnections(now: Int64) {
        let clock = Int32(clamping: (now - drainStarted) / 1_000_000)
        for slot in table.usedSlots() {
            let c = table.entry(slot)
            guard c.pointee.phase == .draining, c.pointee.pending == nil,
                clock - c.pointee.link >= drainQuietPeriodMilliseconds
            else { continue }
            // `link` moves only when this worker reads: after a turn of the loop longer than the
            // quiet period (a starved worker, a long batch) bytes may be waiting unread, and a
            // FIN now would leave them to be discarded while lingering. Only a read that finds
            // nothing makes the connection quiet.
            drainStep(slot, c)
            guard c.pointee.fd >= 0, c.pointee.phase == .draining, c.pointee.pending == nil,
                clock - c.pointee.link >= drainQuietPeriodMilliseconds, drainAgain.last != slot
            else { continue }
            shutdown(c.pointee.fd, Int32(SHUT_WR))
            c.pointee.phase = .lingering
        }
    }

    private func retryDraining() {
        let slots = drainAgain
        drainAgain.removeAll(keepingCapacity: true)
        for slot in slots {
            let c = table.entry(slot)
            guard c.pointee.fd >= 0, c.pointee.phase == .draining, c.pointee.pending == nil else { continue }
            drainStep(slot, c)
        }
    }

    private func discardInput(_ slot: Int32, _ c: UnsafeMutablePointer<Connection>) {
        for _ in 0..<16 {
            switch SocketIO.receive(c.pointee.fd, into: readBuffer, count: echoBufferSize) {
            case .transferred:
                continue
            case .wouldBlock, .interrupted:
                return
            case .endOfStream, .failed:
                close(slot)
                return
            }
        }
    }

    // MARK: - Diagnostics

    private func warnRateLimited(_ message: Logger.Message, _ error: SystemError) {
        warning.warn(logger, message, metadata: ["error": "\(error)"])
    }
}
