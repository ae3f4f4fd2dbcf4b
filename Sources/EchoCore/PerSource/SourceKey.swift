// SPDX-License-Identifier: Apache-2.0
// What "one source" means for every per-source feature (MaxConnectionsPerSource=,
// MaxConnectionRatePerSource=, and the UDP echo's per-source bucket): an IPv4 address, or an
// IPv6 address cut to `SourcePrefixIPv6=` bits (default 64: one host's usual allocation, so a
// host cannot become 2^64 sources by picking addresses from its own /64). An IPv4-mapped IPv6
// address (::ffff:a.b.c.d, what a dual-stack socket reports for an IPv4 peer) is that IPv4
// address.
import Glibc

/// A source of connections or datagrams: the key of the per-source table (`SourceTable`).
///
/// Held as the 128 bits of the IPv6 form (IPv4 as ::ffff:a.b.c.d), masked to the prefix, and the
/// prefix length itself, so keys made under different prefixes (a reload that changed
/// `SourcePrefixIPv6=`) never alias.
public struct SourceKey: Hashable, Sendable, CustomStringConvertible {
    /// The first 64 bits of the address in network order (as a big-endian number).
    public let high: UInt64
    /// The last 64 bits of the address in network order.
    public let low: UInt64
    /// Significant bits: 128 for IPv4 (all 32 bits of the address count), the prefix for IPv6.
    public let bits: UInt8

    /// The default of `SourcePrefixIPv6=`.
    public static let defaultPrefixIPv6 = 64

    /// A key from its parts; `high` and `low` are masked to `bits`.
    public init(high: UInt64, low: UInt64, bits: Int) {
        let bits = min(max(bits, 0), 128)
        // Smart shifts: a shift by 64 or more gives 0, so /0, /64 and /128 need no special case.
        self.high = bits >= 64 ? high : high & (~UInt64(0) << (64 - bits))
        self.low = bits >= 128 ? low : (bits <= 64 ? 0 : low & (~UInt64(0) << (128 - bits)))
        self.bits = UInt8(bits)
    }

    /// The key of an IPv4 address.
    /// - Parameter address: the address in host byte order (127.0.0.1 is 0x7F000001).
    public init(ipv4 address: UInt32) {
        self.init(high: 0, low: 0xFFFF_0000_0000 | UInt64(address), bits: 128)
    }

    /// The key of an IPv6 address, cut to `prefixIPv6` bits unless it is IPv4-mapped.
    public init(ipv6 address: in6_addr, prefixIPv6: Int) {
        let (high, low) = withUnsafeBytes(of: address) {
            (UInt64(bigEndian: $0.loadUnaligned(as: UInt64.self)),
             UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        }
        if high == 0 && low >> 32 == 0xFFFF {
            self.init(ipv4: UInt32(truncatingIfNeeded: low))
        } else {
            self.init(high: high, low: low, bits: prefixIPv6)
        }
    }

    /// The key of a peer address as `accept(2)` or `recvmmsg(2)` filled it in.
    ///
    /// - Parameters:
    ///   - address: an AF_INET or AF_INET6 socket address.
    ///   - prefixIPv6: `SourcePrefixIPv6=`.
    /// - Returns: nil for other families (a Unix socket has no source to limit).
    public init?(_ address: UnsafeRawPointer, prefixIPv6: Int) {
        switch Int32(address.load(as: sockaddr.self).sa_family) {
        case AF_INET:
            let sin = address.loadUnaligned(as: sockaddr_in.self)
            self.init(ipv4: UInt32(bigEndian: sin.sin_addr.s_addr))
        case AF_INET6:
            let sin6 = address.loadUnaligned(as: sockaddr_in6.self)
            self.init(ipv6: sin6.sin6_addr, prefixIPv6: prefixIPv6)
        default:
            return nil
        }
    }

    /// Whether the source is an IPv4 address.
    public var isIPv4: Bool { bits == 128 && high == 0 && low >> 32 == 0xFFFF }

    /// `192.0.2.1` or `2001:db8:1:2::/64` (the prefix length only when it is not 128).
    public var description: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        if isIPv4 {
            var address = in_addr(s_addr: UInt32(truncatingIfNeeded: low).bigEndian)
            inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
            return String(cString: text)
        }
        var address = in6_addr()
        withUnsafeMutableBytes(of: &address) {
            $0.storeBytes(of: high.bigEndian, toByteOffset: 0, as: UInt64.self)
            $0.storeBytes(of: low.bigEndian, toByteOffset: 8, as: UInt64.self)
        }
        inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
        return bits == 128 ? String(cString: text) : "\(String(cString: text))/\(bits)"
    }
}
