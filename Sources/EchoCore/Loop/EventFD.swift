// SPDX-License-Identifier: Apache-2.0
// eventfd(2): the wake-up every blocking loop in echod registers beside its other descriptors.
import CEchoShims
import Glibc

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
    public func wake() { Self.add(1, to: descriptor.rawValue) }

    /// Adds `value` to the counter of the eventfd `fd`, which someone else owns (a peer worker's
    /// wake-up, a start-up latch): the one way echod writes to an eventfd.
    @inline(__always)
    public static func add(_ value: UInt64, to fd: Int32) {
        var value = value
        // EAGAIN means the counter is saturated: the reader is already due to wake.
        _ = try? syscallNonBlocking("write(eventfd)") { Glibc.write(fd, &value, 8) }
    }

    /// Reads and resets the counter (after a wake-up).
    /// - Returns: the counter's value, 0 when it was already 0.
    @discardableResult
    public func drain() -> UInt64 {
        var value: UInt64 = 0
        guard case .processed = try? syscallNonBlocking("read(eventfd)", { Glibc.read(descriptor.rawValue, &value, 8) })
        else { return 0 }
        return value
    }
}
