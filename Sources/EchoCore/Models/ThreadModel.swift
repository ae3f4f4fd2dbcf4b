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
        if let policy = context.datagramPolicy, !context.datagramSockets.isEmpty {
            datagrams = try DatagramThread(sockets: context.datagramSockets, policy: policy, logger: context.logger)
        } else {
            datagrams = nil
        }
        sources = context.sources
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

    private static func connectionThread(_ connection: consuming FileDescriptor, state: SharedState) {
        let fd = connection.rawValue
        state.threads.withLock { $0[fd] = pthread_self() }
        ConnectionTimeouts.shared.apply(to: fd)
        // An idle connection costs its thread's stack pages and no buffer: wait for the first
        // byte (MSG_PEEK leaves it queued) before allocating one.
        if BlockingEcho.waitForInput(fd: fd, stopRequested: { state.stopping.load(ordering: .relaxed) }) {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 16)
            BlockingEcho.serve(
                fd: fd, buffer: buffer, capacity: bufferSize,
                stopRequested: { state.stopping.load(ordering: .relaxed) },
                echoed: { state.bytesEchoed.add($0, ordering: .relaxed) })
            buffer.deallocate()
        } else if state.stopping.load(ordering: .relaxed) {
            BlockingEcho.lingerIdle(fd: fd)
        }
        state.threads.withLock { _ = $0.removeValue(forKey: fd) }
        connection.close()  // only now: a stop may shut down any descriptor still in `threads`
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

    public var isStopped: Bool { escalation.isStopping && state.open.load(ordering: .relaxed) == 0 }

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
