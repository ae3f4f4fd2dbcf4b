// SPDX-License-Identifier: Apache-2.0
// Scoped fixtures for EchoCore tests: blocking loopback clients with timeouts, patterned data.
import CEchoShims
import Glibc
import Testing

@testable import EchoCore

/// A blocking TCP client socket with send/receive timeouts, closed at the end of its scope.
final class TestClient {
    let fd: Int32

    init(connectingTo address: SocketAddress, timeoutSeconds: Int = 5) throws {
        fd = socket(address.family, CEchoShims_SOCK_STREAM | CEchoShims_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { throw SystemError("socket", errno: errno) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = address.withSockAddr { connect(fd, $0, $1) }
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            throw SystemError("connect", errno: e)
        }
    }

    deinit { Glibc.close(fd) }

    func sendAll(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw SystemError("send", errno: errno) }
            off += n
        }
    }

    /// Reads exactly `count` bytes, or throws on EOF/timeout.
    func receive(exactly count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var off = 0
        while off < count {
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + off, count - off, 0) }
            if n == 0 { throw TestFailure("EOF after \(off) of \(count) bytes") }
            guard n > 0 else { throw SystemError("recv", errno: errno) }
            off += n
        }
        return out
    }

    /// Reads until EOF (or throws on timeout).
    func receiveUntilEOF() throws -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n == 0 { return out }
            guard n > 0 else { throw SystemError("recv", errno: errno) }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    /// True if nothing arrives within `milliseconds`.
    func isSilent(milliseconds: Int32) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, milliseconds) == 0
    }

    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
func patterned(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8](repeating: 0, count: count)
    for i in 0..<count {
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

/// A listener on 127.0.0.1 port 0 and its bound address.
func makeLoopbackListener() throws -> (Int32, SocketAddress) {
    let fd = try Socket.listen(on: try SocketAddress(parsing: "127.0.0.1:0"), backlog: 128).release()
    let address = try #require(try Socket.localAddress(fd))
    return (fd, address)
}

/// Polls `condition` until true or the deadline passes.
func eventually(timeoutSeconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + Int64(timeoutSeconds * 1e9)
    while monotonicNanoseconds() < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// Writes all of `bytes` to `fd`, stopping quietly at the first error (for writer threads).
func sendAllIgnoringErrors(fd: Int32, _ bytes: [UInt8]) {
    var off = 0
    while off < bytes.count {
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { return }
        off += n
    }
}
