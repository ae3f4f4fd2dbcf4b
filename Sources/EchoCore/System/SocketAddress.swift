// SPDX-License-Identifier: Apache-2.0

import Glibc

/// An IPv4 or IPv6 socket address, parsed from and printed as `127.0.0.1:7007` or `[::1]:7007`.
///
/// Only numeric addresses are accepted: a daemon that resolves names at boot depends on the
/// network being up, which is what socket activation exists to avoid.
public enum SocketAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(sockaddr_in)
    case v6(sockaddr_in6)

    /// Why a string is not a socket address.
    public struct ParseError: Error, CustomStringConvertible, Equatable, Sendable {
        public let input: String
        public let reason: String
        public var description: String { "invalid address '\(input)': \(reason)" }
    }

    /// Parses `A.B.C.D:PORT` or `[IPV6]:PORT` (port 0 asks the kernel for an ephemeral port).
    ///
    /// - Parameter text: the address.
    /// - Throws: `ParseError` saying what is wrong.
    public init(parsing text: String) throws(ParseError) {
        func fail(_ reason: String) -> ParseError { ParseError(input: text, reason: reason) }
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw fail("missing ']' after IPv6 address") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw fail("expected ':PORT' after ']'") }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw fail("expected HOST:PORT") }
            host = text[..<colon]
            if host.contains(":") { throw fail("IPv6 addresses must be written in brackets, e.g. [::1]:7007") }
            portText = text[text.index(after: colon)...]
        }
        guard !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }), let port = UInt16(portText)
        else { throw fail("port must be a number from 0 to 65535") }
        guard !host.isEmpty else { throw fail("missing host") }

        var sin = sockaddr_in()
        if !text.hasPrefix("["), inet_pton(AF_INET, String(host), &sin.sin_addr) == 1 {
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            self = .v4(sin)
            return
        }
        var sin6 = sockaddr_in6()
        if text.hasPrefix("["), inet_pton(AF_INET6, String(host), &sin6.sin6_addr) == 1 {
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            self = .v6(sin6)
            return
        }
        throw fail(text.hasPrefix("[") ? "'\(host)' is not an IPv6 address" : "'\(host)' is not an IPv4 address")
    }

    /// Reads an address the kernel filled in (`accept`, `getsockname`).
    ///
    /// - Returns: `nil` for families other than AF_INET and AF_INET6.
    public init?(_ storage: sockaddr_storage) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            self = .v4(withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) })
        case AF_INET6:
            self = .v6(withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) })
        default:
            return nil
        }
    }

    /// `AF_INET` or `AF_INET6`.
    public var family: Int32 {
        switch self {
        case .v4: return AF_INET
        case .v6: return AF_INET6
        }
    }

    /// The port, in host byte order.
    public var port: UInt16 {
        get {
            switch self {
            case .v4(let a): return UInt16(bigEndian: a.sin_port)
            case .v6(let a): return UInt16(bigEndian: a.sin6_port)
            }
        }
        set {
            switch self {
            case .v4(var a): a.sin_port = newValue.bigEndian; self = .v4(a)
            case .v6(var a): a.sin6_port = newValue.bigEndian; self = .v6(a)
            }
        }
    }

    /// The address without the port, in numeric form (`127.0.0.1`, `::1`).
    public var host: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch self {
        case .v4(var a): inet_ntop(AF_INET, &a.sin_addr, &buffer, socklen_t(buffer.count))
        case .v6(var a): inet_ntop(AF_INET6, &a.sin6_addr, &buffer, socklen_t(buffer.count))
        }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    public var description: String {
        switch self {
        case .v4: return "\(host):\(port)"
        case .v6: return "[\(host)]:\(port)"
        }
    }

    /// Calls `body` with a pointer to the `sockaddr` and its length.
    public func withSockAddr<R, E: Error>(
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(E) -> R
    ) throws(E) -> R {
        switch self {
        case .v4(var a):
            return try withUnsafeBytes(of: &a) { (raw) throws(E) -> R in
                try body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        case .v6(var a):
            return try withUnsafeBytes(of: &a) { (raw) throws(E) -> R in
                try body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(MemoryLayout<sockaddr_in6>.size))
            }
        }
    }

    // Equal when the descriptions are equal (family, address and port; not the IPv6 flow label
    // or scope), compared on the bytes: formatting both with inet_ntop made the duplicate check
    // over a long `Listen=` list the dearest part of loading the configuration.
    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        switch (lhs, rhs) {
        case (.v4(let a), .v4(let b)):
            return a.sin_port == b.sin_port && a.sin_addr.s_addr == b.sin_addr.s_addr
        case (.v6(var a), .v6(var b)):
            return a.sin6_port == b.sin6_port
                && withUnsafeBytes(of: &a.sin6_addr) { x in withUnsafeBytes(of: &b.sin6_addr) { y in x.elementsEqual(y) } }
        default:
            return false
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case .v4(let a):
            hasher.combine(AF_INET)
            hasher.combine(a.sin_port)
            hasher.combine(a.sin_addr.s_addr)
        case .v6(var a):
            hasher.combine(AF_INET6)
            hasher.combine(a.sin6_port)
            withUnsafeBytes(of: &a.sin6_addr) { hasher.combine(bytes: $0) }
        }
    }
}
