// SPDX-License-Identifier: Apache-2.0
// The one way echoload makes a client connection: a TCP socket for the target, bound to a
// source address if the run has any (with IP_BIND_ADDRESS_NO_PORT), TCP_NODELAY set, and
// connect(2) started. The preflight probe, the event model and the thread model all use it.
import CEchoShims
import EchoCore
import Glibc

enum ClientSocket {
    /// Where a connect stands after `open`.
    enum Outcome {
        /// Connected (blocking sockets, or a non-blocking connect that completed at once).
        case connected(Int32)
        /// A non-blocking connect under way: wait for the socket to become writable, then read
        /// SO_ERROR (`pendingError`).
        case inProgress(Int32)
        /// Failed at `step` with `errno`; nothing is left open.
        case failed(step: Step, errno: Int32)
    }

    /// The system call a connection attempt failed at.
    enum Step: String { case socket, bind, connect }

    /// Opens a socket to `target` and starts connecting.
    ///
    /// - Parameters:
    ///   - source: the local address to bind first, or nil to let the kernel choose.
    ///   - blocking: a blocking socket (the thread model) or a non-blocking one.
    ///   - connectTimeout: for blocking sockets, the bound on connect(2), set as SO_SNDTIMEO
    ///     (which Linux applies to connect); a timed-out connect fails with ETIMEDOUT.
    static func open(to target: SocketAddress, from source: SocketAddress?, blocking: Bool, connectTimeout: Int64 = 0)
        -> Outcome
    {
        let flags = CEchoShims_SOCK_STREAM | CEchoShims_SOCK_CLOEXEC | (blocking ? 0 : CEchoShims_SOCK_NONBLOCK)
        let fd = Glibc.socket(target.family, flags, 0)
        guard fd >= 0 else { return .failed(step: .socket, errno: errno) }
        var one: Int32 = 1
        if let source {
            // Defer the choice of source port to connect(), which then only needs the 4-tuple to be
            // unique: without this, bind() reserves a port per source address for every destination.
            _ = setsockopt(fd, Int32(IPPROTO_IP), CEchoShims_IP_BIND_ADDRESS_NO_PORT, &one, 4)
            if source.withSockAddr({ Glibc.bind(fd, $0, $1) }) != 0 {
                let e = errno
                closeNoRetry(fd)
                return .failed(step: .bind, errno: e)
            }
        }
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4)
        if blocking && connectTimeout > 0 { setTimeout(fd, SO_SNDTIMEO, connectTimeout) }
        var rc: Int32
        repeat { rc = target.withSockAddr { Glibc.connect(fd, $0, $1) } } while rc != 0 && errno == EINTR
        if rc == 0 { return .connected(fd) }
        var e = errno
        if e == EINPROGRESS && !blocking { return .inProgress(fd) }
        // A blocking connect that ran out of SO_SNDTIMEO reports EINPROGRESS (or EAGAIN).
        if e == EINPROGRESS || e == EAGAIN { e = ETIMEDOUT }
        closeNoRetry(fd)
        return .failed(step: .connect, errno: e)
    }

    /// The outcome of a non-blocking connect once its socket polled writable (or errored).
    /// - Returns: 0 when connected, else the errno (ECONNREFUSED if the kernel gave none).
    static func pendingError(_ fd: Int32, hangup: Bool) -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(4)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
        if err == 0 && hangup { return ECONNREFUSED }
        return err
    }

    /// Sets SO_RCVTIMEO or SO_SNDTIMEO to `ns` nanoseconds.
    static func setTimeout(_ fd: Int32, _ option: Int32, _ ns: Int64) {
        var tv = timeval(tv_sec: Int(ns / 1_000_000_000), tv_usec: Int(ns % 1_000_000_000 / 1000))
        _ = setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}
