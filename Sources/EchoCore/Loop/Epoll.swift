// Thin wrappers over epoll(7), eventfd(2) and signalfd(2), which Glibc does not import
// (they come through CEchoShims). Each is a ~Copyable owner of its descriptor.
import CEchoShims
import Glibc

/// An epoll instance. The corresponding C functions are `epoll_create1(2)`, `epoll_ctl(2)`,
/// `epoll_wait(2)`.
public struct Epoll: ~Copyable {
    public let descriptor: FileDescriptor

    /// Interest flags.
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let input = Events(rawValue: CEchoShims_EPOLLIN)
        public static let output = Events(rawValue: CEchoShims_EPOLLOUT)
        public static let error = Events(rawValue: CEchoShims_EPOLLERR)
        public static let hangup = Events(rawValue: CEchoShims_EPOLLHUP)
        public static let readHangup = Events(rawValue: CEchoShims_EPOLLRDHUP)
        /// Wake only one of the epoll instances waiting on a shared descriptor (no thundering herd).
        public static let exclusive = Events(rawValue: CEchoShims_EPOLLEXCLUSIVE)
        public static let edgeTriggered = Events(rawValue: CEchoShims_EPOLLET)
    }

    /// Creates an epoll instance with `EPOLL_CLOEXEC`.
    /// - Throws: `SystemError` from `epoll_create1`.
    public init() throws(SystemError) {
        let fd = try syscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        descriptor = FileDescriptor(owning: fd)
    }

    /// Registers `fd` with `events`; `token` comes back with each of its events.
    /// The corresponding C function is `epoll_ctl(2)` with `EPOLL_CTL_ADD`.
    public func add(_ fd: Int32, events: Events, token: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_ADD, "epoll_ctl(ADD)", fd, events, token)
    }

    /// Changes the interest of a registered `fd`. Not allowed for `.exclusive` registrations.
    public func modify(_ fd: Int32, events: Events, token: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_MOD, "epoll_ctl(MOD)", fd, events, token)
    }

    /// Removes `fd` from the interest list.
    public func delete(_ fd: Int32) throws(SystemError) {
        try control(EPOLL_CTL_DEL, "epoll_ctl(DEL)", fd, [], 0)
    }

    @inline(__always)
    private func control(_ op: Int32, _ name: StaticString, _ fd: Int32, _ events: Events, _ token: UInt64)
        throws(SystemError)
    {
        // Start from a zeroed event: the data union's members overlap, and only u64 is used.
        var event = epoll_event()
        event.events = events.rawValue
        event.data.u64 = token
        let epfd = descriptor.rawValue
        try syscall(name.description) { epoll_ctl(epfd, op, fd, &event) }
    }

    /// Waits for events; the blocking point of every worker (named so profiles can find it).
    ///
    /// - Parameters:
    ///   - buffer: where the kernel writes ready events.
    ///   - timeoutMilliseconds: -1 waits forever, 0 polls.
    /// - Returns: the number of events written (0 on timeout or on EINTR).
    @inline(__always)
    public func _blockingWaitForEvents(
        into buffer: UnsafeMutableBufferPointer<epoll_event>, timeoutMilliseconds: Int32
    ) throws(SystemError) -> Int {
        // A raw system call: glibc's epoll_wait is a cancellation point (see CEchoShims_recv).
        let n = CEchoShims_epoll_wait(descriptor.rawValue, buffer.baseAddress, Int32(buffer.count), timeoutMilliseconds)
        if n < 0 {
            let err = Glibc.errno
            if err == EINTR { return 0 }
            throw SystemError("epoll_wait", errno: err)
        }
        return Int(n)
    }
}

/// An eventfd used to wake a thread blocked in `epoll_wait`. The corresponding C function is
/// `eventfd(2)`.
public struct EventFD: ~Copyable, Sendable {
    public let descriptor: FileDescriptor

    /// Creates a non-blocking, close-on-exec eventfd.
    public init() throws(SystemError) {
        let fd = try syscall("eventfd") { eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC)) }
        descriptor = FileDescriptor(owning: fd)
    }

    /// Makes the eventfd readable. Safe to call from any thread.
    public func wake() {
        var one: UInt64 = 1
        // EAGAIN means the counter is saturated: the reader is already due to wake.
        _ = try? syscallNonBlocking("write(eventfd)") { Glibc.write(descriptor.rawValue, &one, 8) }
    }

    /// Resets the counter after a wake-up.
    public func drain() {
        var value: UInt64 = 0
        _ = try? syscallNonBlocking("read(eventfd)") { Glibc.read(descriptor.rawValue, &value, 8) }
    }
}

/// A signalfd delivering the given signals as readable events. The signals must already be
/// blocked in every thread (see `Signals.block(_:)`). The corresponding C function is
/// `signalfd(2)`.
public struct SignalFD: ~Copyable {
    public let descriptor: FileDescriptor

    /// - Parameter signals: the signals to receive.
    public init(_ signals: [Int32]) throws(SystemError) {
        var mask = sigset_t()
        sigemptyset(&mask)
        for s in signals { sigaddset(&mask, s) }
        let fd = try syscall("signalfd") { signalfd(-1, &mask, Int32(SFD_NONBLOCK) | Int32(SFD_CLOEXEC)) }
        descriptor = FileDescriptor(owning: fd)
    }

    /// A delivered signal: its number and the process that sent it (for SIGCHLD, the child).
    public struct Delivery: Equatable, Sendable {
        public var signal: Int32
        public var pid: pid_t
    }

    /// Reads one pending signal.
    /// - Returns: the signal number, or nil when none is pending.
    public func next() throws(SystemError) -> Int32? {
        try nextDelivery()?.signal
    }

    /// Reads one pending signal with its sender.
    /// - Returns: the delivery, or nil when none is pending.
    public func nextDelivery() throws(SystemError) -> Delivery? {
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        switch try syscallNonBlocking("read(signalfd)", { Glibc.read(descriptor.rawValue, &info, size) }) {
        case .wouldBlock: return nil
        case .processed(let n):
            precondition(n == size, "short read from signalfd")
            return Delivery(signal: Int32(bitPattern: info.ssi_signo), pid: pid_t(bitPattern: info.ssi_pid))
        }
    }
}

/// Process-wide signal mask and disposition helpers.
public enum Signals {
    /// Blocks `signals` in the calling thread; threads created afterwards inherit the mask.
    /// Call before any thread starts, so the signals reach only a signalfd.
    /// The corresponding C function is `pthread_sigmask(3)`.
    public static func block(_ signals: [Int32]) {
        var mask = sigset_t()
        sigemptyset(&mask)
        for s in signals { sigaddset(&mask, s) }
        pthread_sigmask(SIG_BLOCK, &mask, nil)
    }

    /// Unblocks `signals` in the calling thread.
    public static func unblock(_ signals: [Int32]) {
        var mask = sigset_t()
        sigemptyset(&mask)
        for s in signals { sigaddset(&mask, s) }
        pthread_sigmask(SIG_UNBLOCK, &mask, nil)
    }

    /// Ignores SIGPIPE: a peer that resets its connection must give EPIPE, not kill echod.
    public static func ignoreSIGPIPE() {
        signal(SIGPIPE, SIG_IGN)
    }
}
