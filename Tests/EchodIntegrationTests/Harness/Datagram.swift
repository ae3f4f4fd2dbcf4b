// SPDX-License-Identifier: Apache-2.0
// UDP for the tests: a client socket bound where a test says (a reflector's port, as root), a
// raw socket that sends a datagram with any IPv4 source (the spoofing the reflection protection
// is for), echod's UDP ports as it logs them, and its UDP counters as STATUS= shows them.
import CEchoShims
import Foundation
import Glibc

/// A UDP socket on loopback. Receives are bounded by poll(2) with a timeout.
final class UDPClient {
    let socket: Socket
    let host: Loopback

    /// - Parameters:
    ///   - address: the local address to bind (default: `host`'s loopback address).
    ///   - port: the local port (0: ephemeral).
    init(_ host: Loopback, address: String? = nil, port: UInt16 = 0) throws {
        self.host = host
        socket = try Socket.make(family: host.family, type: CEchoShims_SOCK_DGRAM)
        try socket.setOption(SOL_SOCKET, SO_RCVBUF, Int32(4 << 20), "SO_RCVBUF")
        if let address {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            inet_pton(AF_INET, address, &sin.sin_addr)
            let result = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard result == 0 else { throw HarnessError.system("bind(\(address) port \(port))") }
        } else {
            try socket.bind(host, port: port)
        }
    }

    var port: UInt16 { (try? socket.localPort()) ?? 0 }

    /// Sends one datagram to `host`:`port`.
    func send(_ bytes: [UInt8], to port: UInt16) throws {
        let n = bytes.withUnsafeBytes { raw in
            withSocketAddress(host, port: port) { sendto(socket.fd, raw.baseAddress, raw.count, 0, $0, $1) }
        }
        guard n == bytes.count else { throw HarnessError.system("sendto(\(bytes.count) bytes to port \(port))") }
    }

    /// The next datagram, or nil if none arrives within `timeout`.
    func receive(timeout: Duration, capacity: Int = 70_000) throws -> [UInt8]? {
        var pfd = pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0)
        let deadline = Deadline(timeout)
        while true {
            let ready = poll(&pfd, 1, deadline.remainingMilliseconds())
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 { return nil }
            var buffer = [UInt8](repeating: 0, count: capacity)
            let n = buffer.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            guard n >= 0 else { throw HarnessError.system("recv") }
            return Array(buffer[0..<n])
        }
    }

    /// Bytes of every datagram queued now, without waiting.
    func drain() -> (datagrams: Int, bytes: Int) {
        var buffer = [UInt8](repeating: 0, count: 70_000)
        var (count, total) = (0, 0)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 { return (count, total) }
            count += 1
            total += n
        }
    }
}

/// Sends one UDP datagram over IPv4 with a forged source (a raw socket, IP_HDRINCL: root only),
/// as an attacker spoofing a victim or another service would.
func sendSpoofedDatagram(from source: String, port sourcePort: UInt16, to destination: String, port: UInt16, payload: [UInt8]) throws {
    let fd = Glibc.socket(AF_INET, Int32(SOCK_RAW.rawValue) | CEchoShims_SOCK_CLOEXEC, Int32(IPPROTO_RAW))
    guard fd >= 0 else { throw HarnessError.system("socket(SOCK_RAW)") }
    defer { close(fd) }
    var packet = [UInt8](repeating: 0, count: 28)
    packet[0] = 0x45  // IPv4, 20-byte header; total length, id and checksum filled in by the kernel
    packet[8] = 64  // TTL
    packet[9] = UInt8(IPPROTO_UDP)
    var from = in_addr()
    var to = in_addr()
    inet_pton(AF_INET, source, &from)
    inet_pton(AF_INET, destination, &to)
    withUnsafeBytes(of: &from) { for i in 0..<4 { packet[12 + i] = $0[i] } }
    withUnsafeBytes(of: &to) { for i in 0..<4 { packet[16 + i] = $0[i] } }
    let length = UInt16(8 + payload.count)
    for (offset, value) in [(20, sourcePort), (22, port), (24, length)] {
        packet[offset] = UInt8(value >> 8)
        packet[offset + 1] = UInt8(value & 0xFF)
    }
    // UDP checksum 0: none (allowed over IPv4).
    packet += payload
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr = to
    let n = packet.withUnsafeBytes { raw in
        withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    }
    guard n == packet.count else { throw HarnessError.system("sendto(raw)") }
}

extension EchodServer {
    /// echod's UDP sockets as it logged them (`listen.datagram=HOST:PORT`), in order.
    var datagramEndpoints: [(host: Loopback, port: UInt16)] {
        parseListenAddresses(child.stderrText.replacingOccurrences(of: "listen.address=", with: "tcp=")
            .replacingOccurrences(of: "listen.datagram=", with: "listen.address="))
    }

    /// Waits for a STATUS= line whose UDP counters satisfy `condition`.
    /// - Returns: the counters of that line, or of the last one seen if none did (nil if none had any).
    func udpCounters(timeout: Duration = .seconds(8), until condition: ([String: UInt64]) -> Bool) throws -> [String: UInt64]? {
        var last: [String: UInt64]?
        _ = try notify.waitFor(timeout: timeout) { datagram in
            guard let status = notifyValue("STATUS", in: datagram), let counters = parseUDPCounters(status) else { return false }
            last = counters
            return condition(counters)
        }
        return last
    }
}

/// The counters in STATUS='s `udp: 3 received, 2 echoed (1.2 KiB), dropped: 1 reflector-port, …`,
/// by name (`received`, `echoed`, and each drop reason).
func parseUDPCounters(_ status: String) -> [String: UInt64]? {
    guard let range = status.range(of: ", udp: ") else { return nil }
    var counters: [String: UInt64] = [:]
    for piece in status[range.upperBound...].components(separatedBy: ", ") {
        let words = piece.replacingOccurrences(of: "dropped: ", with: "").split(separator: " ")
        guard words.count >= 2, let value = UInt64(words[0]) else { continue }
        counters[String(words[1])] = value
    }
    return counters
}
