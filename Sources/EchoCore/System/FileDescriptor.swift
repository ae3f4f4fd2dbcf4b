// SPDX-License-Identifier: Apache-2.0

import Glibc

/// A file descriptor with exactly one owner, closed exactly once.
///
/// The descriptor closes when its owner goes away (`deinit`), or earlier with `close()`.
/// Being `~Copyable`, it cannot be duplicated by accident, so a double close is a compile-time
/// error rather than a race against fd-number reuse.
public struct FileDescriptor: ~Copyable, Sendable {
    /// The raw descriptor, for passing to system calls. Valid as long as `self` is alive.
    public let rawValue: Int32

    /// Takes ownership of `rawValue`, which the caller must not close itself.
    public init(owning rawValue: Int32) {
        precondition(rawValue >= 0, "FileDescriptor(owning:) needs a valid descriptor, got \(rawValue)")
        self.rawValue = rawValue
    }

    /// Closes the descriptor now.
    public consuming func close() {
        closeNoRetry(rawValue)
        discard self
    }

    /// Gives up ownership without closing, returning the raw descriptor.
    public consuming func release() -> Int32 {
        let fd = rawValue
        discard self
        return fd
    }

    deinit {
        closeNoRetry(rawValue)
    }
}

/// `close(2)`, never retried: on Linux the descriptor is released even when close fails with
/// EINTR, so a retry could close a descriptor another thread has just been given.
/// See https://lwn.net/Articles/576478/ .
@inline(__always)
public func closeNoRetry(_ fd: Int32) {
    let rc = Glibc.close(fd)
    if rc == -1 {
        assertAcceptableErrno(Glibc.errno, "close")
    }
}
