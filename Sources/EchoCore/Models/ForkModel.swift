// SPDX-License-Identifier: Apache-2.0
// The fork model: one process per connection — the classic fork (inetd-style) server.
//
// The parent is the daemon's control thread and nothing else: no worker threads, no Dispatch,
// no Task, no logging thread. Forking a multi-threaded process leaves the child with whatever
// locks other threads held (malloc's, the Swift runtime's); with one thread there are none, so
// the child may run ordinary Swift code. It closes every descriptor but its connection, does
// blocking echo, and leaves with _exit(2), never running the parent's exit handlers.
//
// Trade-off, stated plainly: systemd's coding style warns against long-lived fork-without-exec
// children, since each carries a copy-on-write image of the parent. That image is what this
// model exists to measure; exec'ing a fresh binary per connection would measure exec instead.
//
// Children are reaped through signalfd(SIGCHLD) and waitpid(WNOHANG) in a loop, so no zombie
// outlives the next turn of the control loop. A stop (SIGTERM to the parent — systemd's
// KillMode=mixed sends it to the parent only) stops accepting and forwards SIGTERM to each
// child, which echoes what it had received, shuts its write side and exits when the peer
// closes; children still alive at the deadline get SIGKILL.
//
// UDP sockets (ListenDatagram=) are served by the parent itself, in the control loop, with the
// same `DatagramEcho` as the other models: a datagram needs no process of its own, and a thread
// for it would make the parent multi-threaded, which is what fork(2) must not meet. The echo
// buffers are MADV_DONTFORK, so children do not inherit them.
import CEchoShims
import Glibc
import Logging

/// A process per connection.
public final class ForkModel: ControlLoopModel {
    static let bufferSize = 16 * 1024

    private let listeners: [Int32]
    private var limit: Int
    private var logger: Logger
    private var children: Set<pid_t> = []
    /// The per-source table, and each child's ticket in it, released when the child is reaped
    /// (the child never touches the table).
    private let sources: SourceTable?
    private var childSources: [pid_t: SourceTicket] = [:]
    /// Bytes echoed, added to by children: an anonymous shared page, so the parent can report
    /// them without a pipe per child.
    private let sharedBytes: UnsafeMutablePointer<UInt64>
    /// The children's echo buffer: mapped once in the parent and never touched there, so a
    /// child's first write faults in fresh zero pages instead of copying the parent's, and the
    /// child does not write malloc's bookkeeping (each written page of the parent's heap would
    /// be copied for every child).
    private let childBuffer: UnsafeMutableRawPointer
    private var accepted: UInt64 = 0
    private var backoff: AcceptBackoff
    private var escalation = StopEscalation()
    private var sweepDue = false
    private var lastSweep: Int64 = 0
    private var abnormalExit = RateLimitedWarning()
    private let datagramSockets: [Int32]
    private let datagrams: DatagramEcho?

    /// - Throws: `SystemError` if the shared counter page cannot be mapped.
    public init(configuration: Configuration, context: ModelContext) throws(SystemError) {
        listeners = context.listeners
        limit = context.maxConnections
        logger = context.logger
        sources = context.sources
        backoff = AcceptBackoff(logger: context.logger)
        let page = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        guard let page, page != MAP_FAILED else { throw SystemError("mmap", errno: errno) }
        sharedBytes = page.bindMemory(to: UInt64.self, capacity: 1)
        sharedBytes.pointee = 0
        let buffer = mmap(nil, Self.bufferSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let buffer, buffer != MAP_FAILED else {
            let err = errno
            munmap(page, 4096)
            throw SystemError("mmap", errno: err)
        }
        childBuffer = buffer
        datagramSockets = context.datagramSockets
        if let policy = context.datagramPolicy, !context.datagramSockets.isEmpty {
            do {
                datagrams = try DatagramEcho(policy: policy, logger: context.logger)
            } catch {
                munmap(page, 4096)
                munmap(buffer, Self.bufferSize)
                throw error
            }
        } else {
            datagrams = nil
        }
    }

    deinit {
        munmap(sharedBytes, 4096)
        munmap(childBuffer, Self.bufferSize)
    }

    /// `MaxChildren=`.
    public static func connectionCap(_ configuration: Configuration) -> Int? { configuration.maxChildren }

    public func start() throws(SystemError) {}

    /// Whether a new connection may be taken, back-off aside (the accept loop checks that one
    /// itself; reading `backoff` from inside its own mutating call would be an exclusivity error).
    private var roomForMore: Bool { !escalation.isStopping && children.count < limit }

    private var accepting: Bool { roomForMore && !backoff.isActive }

    public var controlDescriptors: [Int32] {
        (accepting ? listeners : []) + (escalation.isStopping ? [] : datagramSockets)
    }

    public func controlDescriptorReadable(_ fd: Int32) {
        if let datagrams, datagramSockets.contains(fd) {
            datagrams.serve(fd)
            datagrams.publish()
            return
        }
        var spawned: [pid_t] = []
        backoff.acceptConnections(
            from: fd, sources: sources, while: { !escalation.isStopping && children.count + spawned.count < limit }
        ) {
            (connection: consuming FileDescriptor, ticket: SourceTicket) throws(AcceptBackoff.HandlerFailure) in
            let pid: pid_t
            do throws(AcceptBackoff.HandlerFailure) {
                pid = try spawnChild(for: connection)
            } catch {
                sources?.release(ticket)
                throw error
            }
            spawned.append(pid)
            if ticket.isTracked { childSources[pid] = ticket }
        }
        children.formUnion(spawned)
        accepted &+= UInt64(spawned.count)
    }

    /// Forks a child to serve `connection` and closes the parent's copy.
    /// - Returns: the child's pid.
    private func spawnChild(for connection: consuming FileDescriptor) throws(AcceptBackoff.HandlerFailure) -> pid_t {
        fflush(nil)  // nothing buffered may be written twice, once by each process
        let pid = fork()
        let err = errno
        if pid == 0 { childMain(connection) }
        connection.close()
        if pid < 0 {
            throw .init(message: "fork failed; pausing accepts for 1s", error: SystemError("fork", errno: err))
        }
        return pid
    }

    /// The child: never returns. It leaves with _exit, so `connection` is never closed through
    /// its owner; the child's descriptors end with the process.
    private func childMain(_ connection: consuming FileDescriptor) -> Never {
        CEchoShims_child_signal_setup()
        // Keep 0-2 (stderr may be the journal) and the connection, moved to 3; close the rest:
        // listeners, signalfd, the parent's other connections if any were in flight.
        var fd = connection.rawValue
        if fd != 3 {
            if dup2(fd, 3) < 0 { _exit(71) }
            fd = 3
        }
        if CEchoShims_close_from(4) != 0 { _exit(71) }
        let shared = sharedBytes
        ConnectionTimeouts.shared.apply(to: fd)
        BlockingEcho.serve(
            fd: fd, buffer: childBuffer, capacity: Self.bufferSize,
            stopRequested: { CEchoShims_stop_requested() != 0 },
            echoed: { CEchoShims_atomic_add_u64(shared, $0) })
        _exit(0)
    }

    public func childExited(_ pid: pid_t) {
        // waitpid(-1) walks every child in the kernel (wait_consider_task), so reaping n exits
        // that way costs O(n^2): with 19000 children that was most of the parent's CPU in perf.
        // Reap the child the signal names directly, which is O(1), and sweep with waitpid(-1)
        // at most every 100 ms for the exits whose SIGCHLD coalesced with another.
        if pid > 0 { reap(pid) }
        sweepDue = true
    }

    /// Reaps `pid` if it has exited.
    private func reap(_ pid: pid_t) {
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { reaped(pid, status: status) }
    }

    /// Collects every exited child.
    private func reapChildren() {
        sweepDue = false
        lastSweep = monotonicNanoseconds()
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid <= 0 { return }
            reaped(pid, status: status)
        }
    }

    private func reaped(_ pid: pid_t, status: Int32) {
        children.remove(pid)
        if let ticket = childSources.removeValue(forKey: pid) { sources?.release(ticket) }
        let termSignal = status & 0x7f
        let exitCode = (status >> 8) & 0xff
        let abnormal = (termSignal != 0 && !(escalation.forced && termSignal == SIGKILL)) || (termSignal == 0 && exitCode != 0)
        if abnormal {
            abnormalExit.warn(
                logger, "connection process ended abnormally",
                metadata: ["child.pid": "\(pid)", "child.signal": "\(termSignal)", "child.status": "\(exitCode)"])
        }
    }

    public var tickInterval: Int64? {
        let now = monotonicNanoseconds()
        let due = [
            sweepDue ? lastSweep + 100_000_000 - now : nil,
            escalation.nextRound(now: now),
            backoff.remaining,
        ].compactMap { $0 }
        return due.min().map { max(0, $0) }
    }

    public func tick(now: Int64) {
        backoff.expire(now: now)
        if sweepDue && now - lastSweep >= 100_000_000 { reapChildren() }
        switch escalation.step(now: now) {
        case .wait, .force(first: false):
            return
        case .ask:
            for pid in children { kill(pid, SIGTERM) }
        case .force(first: true):
            logger.warning("stop timeout reached; killing remaining connection processes", metadata: ["children": "\(children.count)"])
            for pid in children { kill(pid, SIGKILL) }
        }
    }

    public func beginStop(deadline: Int64) {
        escalation.begin(deadline: deadline, now: monotonicNanoseconds())
        for pid in children { kill(pid, SIGTERM) }
    }

    public var isStopped: Bool {
        escalation.isStopping && children.isEmpty
    }

    public func setMaxConnections(_ limit: Int) { self.limit = limit }

    public func snapshot() -> ServerSnapshot {
        var s = ServerSnapshot()
        s.accepted = accepted
        s.open = children.count
        s.bytesEchoed = CEchoShims_atomic_load_u64(sharedBytes)
        s.acceptBackoffs = backoff.count
        return s
    }

    public var summary: String { "fork model" }
}
