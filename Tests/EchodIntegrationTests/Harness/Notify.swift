// SPDX-License-Identifier: Apache-2.0
// The test's side of sd_notify(3): an AF_UNIX datagram socket whose path goes into the
// child's NOTIFY_SOCKET. Each datagram is one or more newline-separated assignments
// ("READY=1\nSTATUS=…").
import CEchoShims
import Glibc

final class NotifyListener {
    let path: String
    private let socket: Socket
    /// Every datagram received so far, in arrival order.
    private(set) var received: [String] = []

    init(path: String) throws {
        self.path = path
        socket = try Socket.make(family: AF_UNIX, type: CEchoShims_SOCK_DGRAM)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw HarnessError("notify socket path too long for sun_path: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(socket.fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else { throw HarnessError.system("bind(\(path))") }
    }

    /// The next datagram, waiting at most `timeout`; nil if none arrived in time.
    func next(timeout: Duration) throws -> String? {
        let deadline = Deadline(timeout)
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            var entry = pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0)
            let ready = Glibc.poll(&entry, 1, deadline.remainingMilliseconds())
            if ready < 0 {
                if errno == EINTR { continue }
                throw HarnessError.system("poll(notify socket)")
            }
            if ready == 0 { return nil }
            let got = buffer.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
            if got < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw HarnessError.system("recv(notify socket)")
            }
            let text = String(decoding: buffer[0..<got], as: UTF8.self)
            received.append(text)
            return text
        }
    }

    /// Reads datagrams until one satisfies `matches`, for at most `timeout`.
    /// - Returns: that datagram, or nil at the deadline.
    func waitFor(timeout: Duration, _ matches: (String) -> Bool) throws -> String? {
        let deadline = Deadline(timeout)
        while !deadline.hasExpired {
            guard let datagram = try next(timeout: deadline.remaining) else { return nil }
            if matches(datagram) { return datagram }
        }
        return nil
    }

    /// Reads datagrams until one carries exactly the assignment `line` (e.g. "READY=1").
    func waitFor(line: String, timeout: Duration) throws -> String? {
        try waitFor(timeout: timeout) { notifyLines($0).contains(line) }
    }

    /// Everything already queued, without waiting.
    @discardableResult
    func drain() throws -> [String] {
        var datagrams: [String] = []
        while let datagram = try next(timeout: .zero) { datagrams.append(datagram) }
        return datagrams
    }

    /// Received datagrams as one readable string, for failure messages.
    var transcript: String { received.map { $0.debugDescription }.joined(separator: ", ") }
}

/// The assignments in one datagram.
func notifyLines(_ datagram: String) -> [String] {
    datagram.split(separator: "\n").map(String.init)
}

/// The value of `key`'s assignment in a datagram ("STATUS" → the text after "STATUS="), if present.
func notifyValue(_ key: String, in datagram: String) -> String? {
    notifyLines(datagram).first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
}
