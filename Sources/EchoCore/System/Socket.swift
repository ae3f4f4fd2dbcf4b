// SPDX-License-Identifier: Apache-2.0
// Socket system calls used by echod: listeners, accept, and checks on sockets handed over by
// systemd. Every socket is created SOCK_CLOEXEC|SOCK_NONBLOCK from birth, so none can leak into
// a child process between socket() and a later fcntl().
import CEchoShims
import Glibc

/// Socket helpers grouped after the kernel facility.
public enum Socket {
    /// Creates, binds and listens on a TCP socket.
    ///
    /// - Parameters:
    ///   - address: where to listen (port 0: the kernel picks one).
    ///   - backlog: `listen(2)` backlog (the kernel caps it at `net.core.somaxconn`).
    /// - Returns: the listening socket, non-blocking and close-on-exec.
    /// - Throws: `SystemError` naming the call that failed; the half-made socket is closed.
    public static func listen(on address: SocketAddress, backlog: Int32) throws(SystemError) -> FileDescriptor {
        let raw = try syscall("socket") {
            Glibc.socket(address.family, CEchoShims_SOCK_STREAM | CEchoShims_SOCK_NONBLOCK | CEchoShims_SOCK_CLOEXEC, 0)
        }
        let fd = FileDescriptor(owning: raw)  // closes on any throw below
        try setOption(fd.rawValue, SOL_SOCKET, SO_REUSEADDR, 1, "setsockopt(SO_REUSEADDR)")
        if address.family == AF_INET6 {
            // [::]:7 must not also take 0.0.0.0:7: dual-stack binding is spelled out with two Listen= lines.
            try setOption(fd.rawValue, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1, "setsockopt(IPV6_V6ONLY)")
        }
        _ = try address.withSockAddr { (sa, len) throws(SystemError) in
            try syscall("bind(\(address))") { Glibc.bind(fd.rawValue, sa, len) }
        }
        try syscall("listen") { Glibc.listen(fd.rawValue, backlog) }
        return fd
    }

    /// Creates and binds a UDP socket for the datagram echo.
    ///
    /// - Parameter address: where to receive (port 0: the kernel picks one).
    /// - Returns: the bound socket, non-blocking and close-on-exec.
    /// - Throws: `SystemError` naming the call that failed; the half-made socket is closed.
    public static func bindDatagram(on address: SocketAddress) throws(SystemError) -> FileDescriptor {
        let raw = try syscall("socket") {
            Glibc.socket(address.family, CEchoShims_SOCK_DGRAM | CEchoShims_SOCK_NONBLOCK | CEchoShims_SOCK_CLOEXEC, 0)
        }
        let fd = FileDescriptor(owning: raw)  // closes on any throw below
        if address.family == AF_INET6 {
            // As for Listen=: [::]:7 must not also take 0.0.0.0:7.
            try setOption(fd.rawValue, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1, "setsockopt(IPV6_V6ONLY)")
        }
        _ = try address.withSockAddr { (sa, len) throws(SystemError) in
            try syscall("bind(\(address))") { Glibc.bind(fd.rawValue, sa, len) }
        }
        return fd
    }

    /// Sets an integer socket option. The corresponding C function is `setsockopt(2)`.
    public static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ call: String)
        throws(SystemError)
    {
        var v = value
        try syscall(call) { setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// Reads an integer socket option. The corresponding C function is `getsockopt(2)`.
    public static func option(_ fd: Int32, _ level: Int32, _ name: Int32, _ call: String) throws(SystemError) -> Int32 {
        var v: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        try syscall(call) { getsockopt(fd, level, name, &v, &len) }
        return v
    }

    /// The address a socket is bound to. The corresponding C function is `getsockname(2)`.
    public static func localAddress(_ fd: Int32) throws(SystemError) -> SocketAddress? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try withUnsafeMutablePointer(to: &storage) { (p) throws(SystemError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(SystemError) in
                try syscall("getsockname") { getsockname(fd, sa, &len) }
            }
        }
        return SocketAddress(storage)
    }

    /// What a descriptor handed to us turned out to be: a listening stream socket or an IPv4/IPv6
    /// datagram socket (both served), or something echod cannot serve.
    public enum Kind: Equatable, Sendable, CustomStringConvertible {
        case listeningStream
        /// An IPv4 or IPv6 UDP socket (`ListenDatagram=` in a socket unit).
        case datagram
        case notASocket
        case notStream(type: Int32)
        case notListening

        public var description: String {
            switch self {
            case .listeningStream: return "a listening stream socket"
            case .datagram: return "a UDP socket"
            case .notASocket: return "not a socket"
            case .notStream(let t):
                return t == CEchoShims_SOCK_DGRAM ? "a datagram socket that is not IPv4 or IPv6" : "a socket of type \(t)"
            case .notListening: return "a stream socket that is not listening"
            }
        }
    }

    /// Tells a stream socket in the listening state (`SO_TYPE`, `SO_ACCEPTCONN`) and an IPv4 or
    /// IPv6 datagram socket (`SO_TYPE`, `SO_DOMAIN`) from anything else. A socket unit's
    /// `FileDescriptorName=` names all of its sockets alike, so the type is what tells them apart.
    public static func kind(of fd: Int32) -> Kind {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return .notASocket }
        guard let type = try? option(fd, SOL_SOCKET, SO_TYPE, "getsockopt(SO_TYPE)") else { return .notASocket }
        if type == CEchoShims_SOCK_DGRAM,
            let domain = try? option(fd, SOL_SOCKET, SO_DOMAIN, "getsockopt(SO_DOMAIN)"),
            domain == AF_INET || domain == AF_INET6
        {
            return .datagram
        }
        guard type == CEchoShims_SOCK_STREAM else { return .notStream(type: type) }
        guard let listening = try? option(fd, SOL_SOCKET, SO_ACCEPTCONN, "getsockopt(SO_ACCEPTCONN)"),
            listening != 0
        else { return .notListening }
        return .listeningStream
    }

    /// Sets `O_NONBLOCK` and `FD_CLOEXEC` on a descriptor we did not create (sockets passed by
    /// systemd arrive blocking unless the unit says `NonBlocking=yes`).
    public static func makeNonBlockingCloseOnExec(_ fd: Int32) throws(SystemError) {
        let flags = try syscall("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        if flags & O_NONBLOCK == 0 {
            try syscall("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
        }
        let fdFlags = try syscall("fcntl(F_GETFD)") { fcntl(fd, F_GETFD) }
        if fdFlags & FD_CLOEXEC == 0 {
            try syscall("fcntl(F_SETFD)") { fcntl(fd, F_SETFD, fdFlags | FD_CLOEXEC) }
        }
    }

    /// Whether an accept error concerns only the connection being accepted (it died in the queue,
    /// or a firewall refused it), so the next accept may succeed. Other errors (EMFILE, ENFILE,
    /// ENOBUFS, ENOMEM) mean resources are short: accepting again at once would spin.
    public static func isTransientAcceptError(_ errno: Int32) -> Bool {
        switch errno {
        case ECONNABORTED, EPROTO, EPERM, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP,
            ENETUNREACH:
            return true
        default:
            return false
        }
    }

    /// Accepts one connection as a blocking, close-on-exec socket (for the thread and fork
    /// models, whose connections do blocking I/O). The corresponding C function is `accept4(2)`.
    ///
    /// - Parameter peer: where to put the peer's address, if wanted.
    @inline(__always)
    public static func acceptBlocking(_ listener: Int32, peer: UnsafeMutablePointer<sockaddr_storage>? = nil)
        throws(SystemError) -> IOResult<Int32>
    {
        try accept4(listener, peer: peer, flags: CEchoShims_SOCK_CLOEXEC)
    }

    @inline(__always)
    private static func accept4(_ listener: Int32, peer: UnsafeMutablePointer<sockaddr_storage>?, flags: Int32)
        throws(SystemError) -> IOResult<Int32>
    {
        guard let peer else {
            return try syscallNonBlocking("accept4") { CEchoShims_accept4(listener, nil, nil, flags) }
        }
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return try peer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (address) throws(SystemError) in
            try syscallNonBlocking("accept4") { CEchoShims_accept4(listener, address, &length, flags) }
        }
    }

    /// Accepts one connection as non-blocking and close-on-exec.
    /// The corresponding C function is `accept4(2)`.
    ///
    /// - Parameter peer: where to put the peer's address, if wanted.
    /// - Returns: the new descriptor, or `.wouldBlock` when the queue is empty.
    /// - Throws: `SystemError`; ECONNABORTED and friends are for the caller to skip,
    ///   EMFILE/ENFILE/ENOBUFS/ENOMEM to back off on.
    @inline(__always)
    public static func accept(_ listener: Int32, peer: UnsafeMutablePointer<sockaddr_storage>? = nil)
        throws(SystemError) -> IOResult<Int32>
    {
        try accept4(listener, peer: peer, flags: CEchoShims_SOCK_NONBLOCK | CEchoShims_SOCK_CLOEXEC)
    }
}
