// SPDX-License-Identifier: Apache-2.0
// Errors from system calls, carrying the call's name and the errno, so that a
// failure reads "epoll_ctl(ADD): Bad file descriptor (errno 9)" wherever it is
// logged. errno is captured by `syscall(_:_:)` immediately after the call,
// before any allocation or string building can clobber it.
import Glibc

/// A failed system call: which call, and the `errno` it set.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The call that failed, with a qualifier where one call has several uses (`"epoll_ctl(ADD)"`).
    public let call: String
    /// The `errno` value the call set.
    public let errno: Int32

    /// - Parameters:
    ///   - call: the name of the failed call.
    ///   - errno: the errno value it left.
    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    /// `strerror(3)` text for `errno`.
    public var reason: String { String(cString: strerror(errno)) }

    public var description: String { "\(call): \(reason) (errno \(errno))" }
}

/// The result of a non-blocking operation: a value, or "would block" (EAGAIN), which is a
/// condition to wait on, not an error.
public enum IOResult<T>: Equatable where T: Equatable {
    case processed(T)
    case wouldBlock
}

/// Runs a system call, retrying on EINTR, and turns a `-1` return into a thrown `SystemError`.
///
/// `errno` is read straight after the call returns, before anything else runs.
/// EBADF and EFAULT mean a bug in echod (a descriptor used after close, a bad pointer), not a
/// condition of the peer or the system, so they trap in debug builds.
///
/// - Parameters:
///   - call: name for the error message.
///   - body: the call; returns `-1` and sets `errno` on failure.
/// - Returns: the call's non-negative result.
/// - Throws: `SystemError` for any errno but EINTR.
@inline(__always)
@discardableResult
public func syscall<T: FixedWidthInteger>(_ call: @autoclosure () -> String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result == -1 {
            let err = Glibc.errno
            if err == EINTR { continue }
            assertAcceptableErrno(err, call())
            throw SystemError(call(), errno: err)
        }
        return result
    }
}

/// Like `syscall(_:_:)`, but EAGAIN/EWOULDBLOCK come back as `.wouldBlock`.
@inline(__always)
public func syscallNonBlocking<T: FixedWidthInteger>(
    _ call: @autoclosure () -> String, _ body: () -> T
) throws(SystemError) -> IOResult<T> {
    while true {
        let result = body()
        if result == -1 {
            let err = Glibc.errno
            if err == EINTR { continue }
            if err == EAGAIN || err == EWOULDBLOCK { return .wouldBlock }
            assertAcceptableErrno(err, call())
            throw SystemError(call(), errno: err)
        }
        return .processed(result)
    }
}

@inline(__always)
@usableFromInline
func assertAcceptableErrno(_ err: Int32, _ call: @autoclosure () -> String) {
    assert(err != EBADF && err != EFAULT, "\(call()) failed with \(SystemError(call(), errno: err)): a bug, not a condition of the connection")
}
