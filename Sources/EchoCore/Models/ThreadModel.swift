// SPDX-License-Identifier: Apache-2.0
// The thread model: one thread per connection doing blocking I/O — the classic thread server.
//
// The control thread accepts (the listeners are polled by the daemon's control loop) and starts
// a detached thread with a small stack for each connection. At `MaxThreads=` (or
// `MaxConnections=`) it stops polling the listeners; new connections wait in the kernel backlog
// until a thread ends and wakes the loop through an eventfd.
//
// UDP sockets (ListenDatagram=) are served by one more thread, `DatagramThread`, running the
// same `DatagramEcho` as the event model's workers.
import CEchoShims
import Glibc
import Logging
import Synchronization

/// A thread per connection.
public final class ThreadModel: ControlLoopModel {
    /// Signal used to interrupt a connection thread's blocking call during a stop.
    static let interruptSignal = SIGUSR2
    /// Each connection thread's echo buffer (on the heap, not the small stack).
    static let bufferSize = 16 * 1024

    private let listeners: [Int32]
    private let stackSize: Int
    private var logger: Logger
    private let state: SharedState
    private let sources: SourceTable?
    private var accepted: UInt64 = 0
    private var backoff: AcceptBackoff
    private var escalation = StopEscalation()
    private let datagrams: DatagramThread?
    /// The hand-over channel's sending end while handing over, and what was sent.
    private var handoverSender: Int32 = -1
    private var handoverSent: Int?
    /// Connections handed over by the previous echod, started in `start`.
    private var inherited: [InheritedConnection]

    /// What connection threads share with the control thread.
    final class SharedState: Sendable {
        let open = Atomic<Int>(0)
        let limit: Atomic<Int>
        let bytesEchoed = Atomic<UInt64>(0)
        let stopping = Atomic<Bool>(false)
        /// Live connection threads by connection descriptor, so a stop can interrupt them.
        /// A thread removes itself (under the lock) before closing its descriptor and exiting,
        /// so every pthread_t found here is alive.
        let threads = Locked<[Int32: pthread_t]>([:])
        /// Wakes the control loop when a slot frees at the limit, or a thread ends during a stop.
        let wakeup: EventFD
        /// At a restart: true while connection threads should park their connections (in
        /// `parked`) instead of draining them.
        let handingOver = Atomic<Bool>(false)
        /// Connections parked by their threads for the hand-over, with their unsent bytes.
        let parked = Locked<[(fd: Int32, pending: [UInt8])]>([])

        init(limit: Int) throws(SystemError) {
            self.limit = Atomic(limit)
            wakeup = try EventFD()
        }
    }

    /// - Throws: `SystemError` if the eventfd cannot be made.
    public init(configuration: Configuration, context: ModelContext) throws(SystemError) {
        listeners = context.listeners
        stackSize = configuration.threadStackSize
        logger = context.logger
        backoff = AcceptBackoff(logger: context.logger)
        state = try SharedState(limit: context.maxConnections)
        sources = context.sources
        if let policy = context.datagramPolicy, !context.datagramSockets.isEmpty {
            datagrams = try DatagramThread(sockets: context.datagramSockets, policy: policy, logger: context.logger)
        } else {
            datagrams = nil
        }
        inherited = context.inherited
    }

    /// The UDP thread's epoll instance and eventfd.
    public static func descriptorReserve(_ configuration: Configuration) -> Int { 2 }

    /// `MaxThreads=`.
    public static func connectionCap(_ configuration: Configuration) -> Int? { configuration.maxThreads }

    public func start() throws(SystemError) {
        // Process-wide disposition; the signal is only ever sent to connection threads.
        if CEchoShims_install_interrupt_handler(Self.interruptSignal) != 0 {
            throw SystemError("sigaction(SIGUSR2)", errno: errno)
        }
        try datagrams?.start()
        let inherited = self.inherited
        self.inherited = []
        for connection in inherited {
            let pending = connection.pending
            let fd = connection.take()
            do throws(SystemError) {
                try Socket.setBlocking(fd.rawValue, true)
            } catch {
                logger.warning("cannot serve a connection taken over; closing it", metadata: ["error": "\(error)"])
                continue
            }
            state.open.add(1, ordering: .relaxed)
            let handoff = Handoff(fd)
            let state = self.state
            do throws(SystemError) {
                try JoinableThread.detach(name: "echod-conn", stackSize: stackSize) {
                    Self.connectionThread(handoff.take(), state: state, pending: pending)
                }
            } catch {
                state.open.subtract(1, ordering: .relaxed)
                logger.warning("cannot start a thread for a connection taken over; closing it", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Whether a new connection may be taken, back-off aside (the accept loop checks that one
    /// itself; reading `backoff` from inside its own mutating call would be an exclusivity error).
    private var roomForMore: Bool {
        !escalation.isStopping && state.open.load(ordering: .relaxed) < state.limit.load(ordering: .relaxed)
    }

    private var accepting: Bool { roomForMore && !backoff.isActive }

    public var controlDescriptors: [Int32] {
        (accepting ? listeners : []) + [state.wakeup.descriptor.rawValue]
    }

    public func controlDescriptorReadable(_ fd: Int32) {
        if fd == state.wakeup.descriptor.rawValue {
            state.wakeup.drain()
            return
        }
        acceptConnections(from: fd)
    }

    private func acceptConnections(from listener: Int32) {
        let state = self.state
        let stackSize = self.stackSize
        let sources = self.sources
        var started: UInt64 = 0
        backoff.acceptConnections(from: listener, sources: sources, while: { roomForMore }) {
            (connection: consuming FileDescriptor, ticket: SourceTicket) throws(AcceptBackoff.HandlerFailure) in
            state.open.add(1, ordering: .relaxed)
            let handoff = Handoff(connection)
            do throws(SystemError) {
                try JoinableThread.detach(name: "echod-conn", stackSize: stackSize) {
                    Self.connectionThread(handoff.take(), state: state)
                    // The connection is closed: its source may have another.
                    sources?.release(ticket)
                }
                started &+= 1
            } catch {
                state.open.subtract(1, ordering: .relaxed)
                sources?.release(ticket)
                // The thread never ran: `handoff` still owns the connection and closes it.
                throw .init(message: "cannot start a connection thread; pausing accepts for 1s", error: error)
            }
        }
        accepted &+= started
    }

    /// Carries a connection to its new thread (a ~Copyable value cannot be captured by an
    /// escaping closure): the owner until the thread takes it, and closes it if it never does.
    private final class Handoff: @unchecked Sendable {
        private var connection: FileDescriptor?
        init(_ connection: consuming FileDescriptor) { self.connection = .some(connection) }
        /// Called once, by the connection thread.
        func take() -> FileDescriptor { connection.take()! }
    }

    private static func connectionThread(_ connection: consuming FileDescriptor, state: SharedState, pending: [UInt8] = []) {
        let fd = connection.rawValue
        state.threads.withLock { $0[fd] = pthread_self() }
        ConnectionTimeouts.shared.apply(to: fd)
        // At a restart the connection is parked for the hand-over with what it has not echoed.
        let handOver: (UnsafeRawBufferPointer) -> Bool = { unsent in
            guard state.handingOver.load(ordering: .relaxed) else { return false }
            state.parked.withLock { $0.append((fd, Array(unsent))) }
            return true
        }
        var parked = false
        var carried = pending
        var carriedOut = true
        if !carried.isEmpty {
            // Bytes the previous echod read and did not echo go out before anything is read.
            carriedOut = carried.withUnsafeMutableBytes { p in
                BlockingEcho.writeAll(fd: fd, p.baseAddress!, count: p.count) { offset in
                    guard state.stopping.load(ordering: .relaxed) else { return false }
                    parked = handOver(UnsafeRawBufferPointer(rebasing: p[offset...]))
                    return parked
                }
            }
        }
        // An idle connection costs its thread's stack pages and no buffer: wait for the first
        // byte (MSG_PEEK leaves it queued) before allocating one.
        if parked || !carriedOut {
            // Handed over again, or the peer went away while its bytes went out.
        } else if BlockingEcho.waitForInput(fd: fd, stopRequested: { state.stopping.load(ordering: .relaxed) }) {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 16)
            parked = BlockingEcho.serve(
                fd: fd, buffer: buffer, capacity: bufferSize,
                stopRequested: { state.stopping.load(ordering: .relaxed) },
                echoed: { state.bytesEchoed.add($0, ordering: .relaxed) }, handOver: handOver)
            buffer.deallocate()
        } else if state.stopping.load(ordering: .relaxed) {
            parked = handOver(UnsafeRawBufferPointer(start: nil, count: 0))
            if !parked { BlockingEcho.lingerIdle(fd: fd) }
        }
        carried = []
        state.threads.withLock { _ = $0.removeValue(forKey: fd) }
        if parked {
            _ = connection.release()  // the hand-over owns it now (`parked`)
        } else {
            connection.close()  // only now: a stop may shut down any descriptor still in `threads`
        }
        let before = state.open.subtract(1, ordering: .relaxed).oldValue
        if before >= state.limit.load(ordering: .relaxed) || state.stopping.load(ordering: .relaxed) {
            state.wakeup.wake()
        }
    }

    public var tickInterval: Int64? {
        escalation.isStopping ? StopEscalation.period : backoff.remaining
    }

    public func tick(now: Int64) {
        backoff.expire(now: now)
        switch escalation.step(now: now) {
        case .wait:
            return
        case .ask:
            break
        case .force where state.handingOver.load(ordering: .relaxed):
            break  // a hand-over never shuts a connection: keep asking until every thread parked it
        case .force(let first):
            // Out of time: shut the sockets under the threads; their blocked calls return. Again
            // on every round, for threads that registered after the first.
            let left = state.threads.withLock { threads in
                for fd in threads.keys { shutdown(fd, Int32(SHUT_RDWR)) }
                return threads.count
            }
            if first {
                logger.warning("stop timeout reached; closed remaining connections", metadata: ["connections.closed": "\(left)"])
            }
        }
        interruptAll()
    }

    /// Interrupts every connection thread's blocking call so it sees the stop flag; repeated
    /// by `tick` (see `StopEscalation`).
    private func interruptAll() {
        state.threads.withLock { threads in
            for thread in threads.values { pthread_kill(thread, Self.interruptSignal) }
        }
    }

    public func beginStop(deadline: Int64) {
        escalation.begin(deadline: deadline, now: monotonicNanoseconds())
        state.stopping.store(true, ordering: .relaxed)
        interruptAll()
        datagrams?.stop()
    }

    public func beginHandover(sender: Int32, deadline: Int64) -> Bool {
        handoverSender = sender
        state.handingOver.store(true, ordering: .relaxed)
        beginStop(deadline: deadline)
        return true
    }

    public var handedOver: Int { handoverSent ?? 0 }

    /// True once every connection thread has ended; at a restart, the parked connections are
    /// then sent on the hand-over channel (one segment, from this control thread).
    public var isStopped: Bool {
        guard escalation.isStopping && state.open.load(ordering: .relaxed) == 0 else { return false }
        if handoverSender >= 0 && handoverSent == nil { sendParked() }
        return true
    }

    /// Sends the parked connections and closes this process's copies. The channel takes about
    /// 70,000 with the default send buffer, above `MaxThreads=`'s ceiling; what it refuses
    /// anyway is shut down (FIN after what was echoed) and closed, and logged.
    private func sendParked() {
        let parked = state.parked.withLock { p in
            defer { p.removeAll() }
            return p
        }
        // The pending bytes side by side in one allocation, for the items to point into.
        let total = parked.reduce(0) { $0 + $1.pending.count }
        let bytes = UnsafeMutableRawPointer.allocate(byteCount: max(1, total), alignment: 16)
        defer { bytes.deallocate() }
        var items: [HandoverItem] = []
        items.reserveCapacity(parked.count)
        var offset = 0
        for p in parked {
            p.pending.withUnsafeBytes { (bytes + offset).copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(bytes), byteCount: $0.count) }
            items.append(HandoverItem(fd: p.fd, pending: UnsafeRawBufferPointer(start: bytes + offset, count: p.pending.count)))
            offset += p.pending.count
        }
        let (sent, error) = Handover.sendSegment(items, over: handoverSender, segment: Handover.segmentID(index: 0))
        for (i, p) in parked.enumerated() {
            if i >= sent { shutdown(p.fd, Int32(SHUT_WR)) }
            closeNoRetry(p.fd)
        }
        handoverSent = sent
        if let error {
            logger.error(
                "hand-over channel refused connections; closed them",
                metadata: ["connections.handed_over": "\(sent)", "connections.closed": "\(parked.count - sent)", "error": "\(error)"])
        }
    }

    public func setMaxConnections(_ limit: Int) {
        state.limit.store(limit, ordering: .relaxed)
    }

    public func snapshot() -> ServerSnapshot {
        var s = ServerSnapshot()
        s.accepted = accepted
        s.open = state.open.load(ordering: .relaxed)
        s.bytesEchoed = state.bytesEchoed.load(ordering: .relaxed)
        s.acceptBackoffs = backoff.count
        return s
    }

    public var summary: String { "thread model, \(stackSize / 1024)K stacks" }
}
