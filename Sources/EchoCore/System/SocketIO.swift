// SPDX-License-Identifier: Apache-2.0
// The system calls of the echo paths (echod's models and echoload's drivers): recv, send and
// sendmsg on a connected socket, as always-inlined helpers over the raw system calls
// (CEchoShims_recv/send/sendmsg: glibc's wrappers are cancellation
// points, about 60 instructions a call in a multi-threaded process). errno is read at once;
// "would block" and "interrupted" come back as values, not thrown errors, because on these paths
// they are ordinary: level-triggered epoll reports the socket again, and the blocking models
// look at their stop flag after an interrupted call.
import CEchoShims
import Glibc

/// The outcome of one `recv` or `send`.
public enum Transfer: Equatable {
    /// Bytes moved (more than 0 for recv; 0 or more for send).
    case transferred(Int)
    /// recv only: the peer shut down its sending side.
    case endOfStream
    /// EAGAIN/EWOULDBLOCK: nothing to read, or no room to write, now.
    case wouldBlock
    /// EINTR: a signal interrupted a blocking call.
    case interrupted
    /// Any other errno (ECONNRESET, EPIPE, ETIMEDOUT, ...): the connection is gone.
    case failed(errno: Int32)
}

/// recv(2), send(2) and sendmsg(2) for the echo paths. Inlinable, so that echoload's drivers
/// (another module) get the same inlined calls as echod's worker.
public enum SocketIO {
    /// Reads up to `count` bytes. The corresponding C function is `recv(2)`.
    @inlinable @inline(__always)
    public static func receive(_ fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, flags: Int32 = 0) -> Transfer {
        let n = CEchoShims_recv(fd, buffer, count, flags)
        if n > 0 { return .transferred(n) }
        if n == 0 { return .endOfStream }
        return failure(Glibc.errno)
    }

    /// Writes up to `count` bytes, with MSG_NOSIGNAL (a reset peer gives EPIPE, not SIGPIPE)
    /// added to `flags`. The corresponding C function is `send(2)`.
    @inlinable @inline(__always)
    public static func send(_ fd: Int32, from buffer: UnsafeRawPointer, count: Int, flags: Int32 = 0) -> Transfer {
        let n = CEchoShims_send(fd, buffer, count, flags | Int32(MSG_NOSIGNAL))
        // The common case first, in one compare: everything went (callers that compare the
        // result with `count` then fold their own test away).
        if n == count { return .transferred(count) }
        if n >= 0 { return .transferred(n) }
        return failure(Glibc.errno)
    }

    /// Writes the `count` buffers at `vectors` in order, with MSG_NOSIGNAL added to `flags`
    /// (one call however many buffers: echoload sends a patterned stream slice by slice).
    /// The corresponding C function is `sendmsg(2)`.
    @inlinable @inline(__always)
    public static func send(_ fd: Int32, vectors: UnsafeMutablePointer<iovec>, count: Int, flags: Int32 = 0) -> Transfer {
        var message = msghdr()
        message.msg_iov = vectors
        message.msg_iovlen = count
        let n = CEchoShims_sendmsg(fd, &message, flags | Int32(MSG_NOSIGNAL))
        if n >= 0 { return .transferred(n) }
        return failure(Glibc.errno)
    }

    @usableFromInline @inline(__always)
    static func failure(_ err: Int32) -> Transfer {
        if err == EAGAIN || err == EWOULDBLOCK { return .wouldBlock }
        if err == EINTR { return .interrupted }
        assertAcceptableErrno(err, "recv/send")
        return .failed(errno: err)
    }
}
