// SPDX-License-Identifier: Apache-2.0
// Loopback sockets for the tests: listeners to hand to echod, and blocking clients whose
// every call is bounded by SO_RCVTIMEO / SO_SNDTIMEO so that nothing can hang forever.
// Every descriptor is created with SOCK_CLOEXEC; writes use MSG_NOSIGNAL, so a peer's
// reset is an EPIPE error here, never a SIGPIPE that kills the test runner.
import CEchoShims
import Glibc

/// The loopback address families echod is tested on.
enum Loopback: String, CaseIterable, CustomStringConvertible {
    case v4 = "127.0.0.1"
    case v6 = "::1"

    var family: Int32 { self == .v4 ? AF_INET : AF_INET6 }
    var description: String { rawValue }
}

/// An owned descriptor, closed on `close()` or deinit.
final class Socket {
    private(set) var fd: Int32

    init(fd: Int32) { self.fd = fd }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// A new socket of `type` (CEchoShims_SOCK_STREAM / _DGRAM) with SOCK_CLOEXEC.
    static func make(family: Int32, type: Int32) throws -> Socket {
        let fd = Glibc.socket(family, type | CEchoShims_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { throw HarnessError.system("socket") }
        return Socket(fd: fd)
    }

    func setOption<T: BitwiseCopyable>(_ level: Int32, _ name: Int32, _ value: T, _ label: String) throws {
        let result = withUnsafeBytes(of: value) { setsockopt(fd, level, name, $0.baseAddress, socklen_t($0.count)) }
        guard result == 0 else {
            throw HarnessError.system("setsockopt(\(label))")
        }
    }

    func setNonBlocking() throws {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else { throw HarnessError.system("fcntl(O_NONBLOCK)") }
    }

    /// Bounds every blocking send, recv and connect on this socket.
    func setTimeouts(_ timeout: Duration) throws {
        let (seconds, attoseconds) = timeout.components
        let value = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
        try setOption(SOL_SOCKET, SO_RCVTIMEO, value, "SO_RCVTIMEO")
        try setOption(SOL_SOCKET, SO_SNDTIMEO, value, "SO_SNDTIMEO")
    }

    /// SO_LINGER {on, 0}: close() then sends RST instead of FIN.
    func setLingerZero() throws {
        try setOption(SOL_SOCKET, SO_LINGER, linger(l_onoff: 1, l_linger: 0), "SO_LINGER")
    }

    func bind(_ host: Loopback, port: UInt16) throws {
        let result = withSocketAddress(host, port: port) { Glibc.bind(fd, $0, $1) }
        guard result == 0 else { throw HarnessError.system("bind(\(host) port \(port))") }
    }

    func connect(_ host: Loopback, port: UInt16) throws {
        while true {
            let result = withSocketAddress(host, port: port) { Glibc.connect(fd, $0, $1) }
            if result == 0 { return }
            if errno == EINTR { continue }
            throw HarnessError.system("connect(\(host) port \(port))")
        }
    }

    /// The port this socket is bound to (getsockname).
    func localPort() throws -> UInt16 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { throw HarnessError.system("getsockname") }
        // sin_port and sin6_port sit at the same offset, in network byte order.
        return withUnsafeBytes(of: &storage) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
    }

    /// Pending socket error (SO_ERROR), 0 if none.
    func pendingError() -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length)
        return value
    }
}

/// Calls `body` with a sockaddr for `host`:`port`.
func withSocketAddress<R>(_ host: Loopback, port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    switch host {
    case .v4:
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, host.rawValue, &address.sin_addr)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    case .v6:
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        inet_pton(AF_INET6, host.rawValue, &address.sin6_addr)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
    }
}

/// A TCP socket listening on `host` port 0 (an ephemeral port), with its port read back.
func makeListener(_ host: Loopback = .v4, backlog: Int32 = 1024) throws -> (socket: Socket, port: UInt16) {
    let socket = try Socket.make(family: host.family, type: CEchoShims_SOCK_STREAM)
    try socket.setOption(SOL_SOCKET, SO_REUSEADDR, Int32(1), "SO_REUSEADDR")
    try socket.bind(host, port: 0)
    guard listen(socket.fd, backlog) == 0 else { throw HarnessError.system("listen") }
    return (socket, try socket.localPort())
}

/// A port that was free a moment ago: bind port 0, read it back, close. Whoever binds it
/// next may still race another process for it, so callers retry on EADDRINUSE.
func probeFreePort(_ host: Loopback = .v4) throws -> UInt16 {
    let socket = try Socket.make(family: host.family, type: CEchoShims_SOCK_STREAM)
    try socket.bind(host, port: 0)
    return try socket.localPort()
}

/// A blocking TCP client on loopback. Every call is bounded by the socket timeouts, and a
/// timeout surfaces as a thrown error naming the call.
final class Client {
    let socket: Socket
    let host: Loopback
    let port: UInt16

    /// - Parameters:
    ///   - receiveBuffer: SO_RCVBUF, set before connecting so that the window the peer sees is
    ///     small from the first byte (a slow reader makes the peer's sends partial).
    ///   - source: an IPv4 loopback address to connect from (e.g. "127.0.0.2"), so that one test
    ///     can be several sources.
    init(
        _ host: Loopback = .v4, port: UInt16, timeout: Duration = .seconds(10), receiveBuffer: Int32? = nil,
        source: String? = nil
    ) throws {
        self.host = host
        self.port = port
        socket = try Socket.make(family: host.family, type: CEchoShims_SOCK_STREAM)
        try socket.setTimeouts(timeout)
        if let receiveBuffer { try socket.setOption(SOL_SOCKET, SO_RCVBUF, receiveBuffer, "SO_RCVBUF") }
        if let source {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            guard inet_pton(AF_INET, source, &address.sin_addr) == 1 else { throw HarnessError("bad source \(source)") }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.bind(socket.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard bound == 0 else { throw HarnessError.system("bind(\(source))") }
        }
        try socket.connect(host, port: port)
    }

    var fd: Int32 { socket.fd }

    func writeAll(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if sent < 0 {
                if errno == EINTR { continue }
                throw HarnessError.system("send(\(offset) of \(bytes.count) bytes written)")
            }
            offset += sent
        }
    }

    /// Reads exactly `count` bytes; EOF before that is an error.
    func readExactly(_ count: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let got = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, count - offset, 0) }
            if got == 0 { throw HarnessError("recv: EOF after \(offset) of \(count) bytes") }
            if got < 0 {
                if errno == EINTR { continue }
                throw HarnessError.system("recv(\(offset) of \(count) bytes read)")
            }
            offset += got
        }
        return buffer
    }

    /// Reads until EOF. More than `limit` bytes, a timeout or a reset is an error.
    func readToEOF(limit: Int = 64 << 20) throws -> [UInt8] {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if got == 0 { return result }
            if got < 0 {
                if errno == EINTR { continue }
                throw HarnessError.system("recv(waiting for EOF after \(result.count) bytes)")
            }
            result += chunk[0..<got]
            if result.count > limit { throw HarnessError("read \(result.count) bytes, more than the \(limit) expected") }
        }
    }

    /// Whether something (data or EOF) is ready to read now, without waiting.
    func hasInput() -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) == 1
    }

    func shutdownWrite() throws {
        guard shutdown(fd, Int32(SHUT_WR)) == 0 else { throw HarnessError.system("shutdown(SHUT_WR)") }
    }

    func close() { socket.close() }
}

/// One request/response round trip: `count` patterned bytes, half-close, read to EOF,
/// byte-exact comparison. Throws with the first differing offset on a mismatch.
func roundTrip(_ host: Loopback = .v4, port: UInt16, count: Int = 1000, seed: UInt64 = 1) throws {
    let client = try Client(host, port: port)
    let payload = Pattern.bytes(seed: seed, offset: 0, count: count)
    try client.writeAll(payload)
    try client.shutdownWrite()
    let echoed = try client.readToEOF(limit: count)
    if let problem = describeMismatch(received: echoed, expected: payload) {
        throw HarnessError("echo via \(host) port \(port): \(problem)")
    }
}
