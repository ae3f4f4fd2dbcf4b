// SPDX-License-Identifier: Apache-2.0
// A thin wrapper over epoll(7), which Glibc does not import (it comes through CEchoShims): a
// ~Copyable owner of the epoll descriptor. Its siblings are EventFD.swift, SignalFD.swift.
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
        public static let readHangup = Events(rawValue: CEchoShims_EPOLLRDHUP)
        /// Wake only one of the epoll instances waiting on a shared descriptor (no thundering herd).
        public static let exclusive = Events(rawValue: CEchoShims_EPOLLEXCLUSIVE)
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
