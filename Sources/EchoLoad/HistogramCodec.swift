// SPDX-License-Identifier: Apache-2.0
// The HdrHistogram interchange format (V2, compressed, base64: "HISTFAAA..."), so that echoload's
// latency logs are read by the HdrHistogram tools (HistogramLogAnalyzer, the plotters, every
// language's HistogramLogReader). Written from the format's description: a 40-byte big-endian
// header (cookie, payload length, normalizing offset, significant digits, lowest and highest
// trackable value, integer-to-double ratio), then the bucket counts from index 0 to the maximum's
// bucket as ZigZag LEB128 integers, a run of empty buckets as its negated length; the compressed
// form is a cookie, the compressed length and the zlib stream of all that.
import CZlib
import Histogram

public enum HistogramCodec {
    static let cookie: UInt32 = 0x1c84_9313  // V2 encoding, word size flag 0x10
    static let compressedCookie: UInt32 = 0x1c84_9314
    static let headerSize = 40

    /// The histogram's bucket layout (HdrHistogram's, derived from its lowest discernible value
    /// and significant digits).
    struct Layout {
        let unitMagnitude: Int
        let subBucketHalfCountMagnitude: Int
        let subBucketHalfCount: Int
        let subBucketMask: UInt64

        init(lowest: UInt64, digits: Int) {
            var largest: UInt64 = 2
            for _ in 0..<digits { largest *= 10 }
            var countMagnitude = 0
            while (UInt64(1) << countMagnitude) < largest { countMagnitude += 1 }
            subBucketHalfCountMagnitude = max(countMagnitude, 1) - 1
            unitMagnitude = 63 - max(lowest, 1).leadingZeroBitCount
            let subBucketCount = 1 << (subBucketHalfCountMagnitude + 1)
            subBucketHalfCount = subBucketCount / 2
            subBucketMask = UInt64(subBucketCount - 1) << unitMagnitude
        }

        func index(of value: UInt64) -> Int {
            let bucket = 64 - unitMagnitude - subBucketHalfCountMagnitude - 1 - (value | subBucketMask).leadingZeroBitCount
            let sub = Int(value >> UInt64(bucket + unitMagnitude))
            return ((bucket + 1) << subBucketHalfCountMagnitude) + (sub - subBucketHalfCount)
        }

        func value(at index: Int) -> UInt64 {
            var bucket = (index >> subBucketHalfCountMagnitude) - 1
            var sub = (index & (subBucketHalfCount - 1)) + subBucketHalfCount
            if bucket < 0 {
                sub -= subBucketHalfCount
                bucket = 0
            }
            return UInt64(sub) << UInt64(bucket + unitMagnitude)
        }
    }

    /// The uncompressed V2 encoding: header and counts.
    static func encodeV2(_ h: Histogram<UInt64>) -> [UInt8] {
        let layout = Layout(lowest: h.lowestDiscernibleValue, digits: Int(h.numberOfSignificantValueDigits.rawValue))
        var payload: [UInt8] = []
        let limit = h.totalCount == 0 ? 0 : layout.index(of: h.maxRecorded) + 1
        var i = 0
        while i < limit {
            let count = h.countForValue(layout.value(at: i))
            i += 1
            if count != 0 {
                putZigZag(Int64(count), &payload)
            } else {
                var zeros: Int64 = 1
                while i < limit && h.countForValue(layout.value(at: i)) == 0 {
                    zeros += 1
                    i += 1
                }
                putZigZag(-zeros, &payload)
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(headerSize + payload.count)
        put32(cookie, &out)
        put32(UInt32(payload.count), &out)
        put32(0, &out)  // normalizing index offset
        put32(UInt32(h.numberOfSignificantValueDigits.rawValue), &out)
        put64(h.lowestDiscernibleValue, &out)
        put64(h.highestTrackableValue, &out)
        put64((1.0 as Double).bitPattern, &out)  // integer-to-double conversion ratio
        out += payload
        return out
    }

    /// The compressed encoding in base64, as in an HdrHistogram interval log.
    public static func encode(_ h: Histogram<UInt64>) -> String {
        let raw = encodeV2(h)
        var bound = compressBound(uLong(raw.count))
        var compressed = [UInt8](repeating: 0, count: Int(bound))
        let rc = compressed.withUnsafeMutableBufferPointer { c in
            raw.withUnsafeBufferPointer { r in compress2(c.baseAddress, &bound, r.baseAddress, uLong(r.count), 9) }
        }
        precondition(rc == Z_OK, "compress2 failed with a buffer of compressBound: \(rc)")
        var out: [UInt8] = []
        put32(compressedCookie, &out)
        put32(UInt32(bound), &out)
        out += compressed[0..<Int(bound)]
        return Base64.encode(out)
    }

    /// Reads what `encode` (or any HdrHistogram implementation) wrote: compressed or not.
    /// - Returns: nil for anything that is not a V2 histogram with the counts it claims.
    public static func decode(_ text: String) -> Histogram<UInt64>? {
        guard var bytes = Base64.decode(text), bytes.count >= 8 else { return nil }
        if get32(bytes, 0) == compressedCookie {
            let length = Int(get32(bytes, 4))
            guard length <= bytes.count - 8 else { return nil }
            var size = uLong(1 << 16)
            while true {
                var raw = [UInt8](repeating: 0, count: Int(size))
                var got = size
                let rc = raw.withUnsafeMutableBufferPointer { r in
                    bytes.withUnsafeBufferPointer { b in uncompress(r.baseAddress, &got, b.baseAddress! + 8, uLong(length)) }
                }
                if rc == Z_BUF_ERROR && size < 64 << 20 {
                    size *= 4
                    continue
                }
                guard rc == Z_OK else { return nil }
                bytes = Array(raw[0..<Int(got)])
                break
            }
        }
        guard bytes.count >= headerSize, get32(bytes, 0) == cookie else { return nil }
        let payloadLength = Int(get32(bytes, 4))
        let digits = Int(get32(bytes, 12))
        let lowest = get64(bytes, 16)
        let highest = get64(bytes, 24)
        guard get32(bytes, 8) == 0, let sig = SignificantDigits(rawValue: Int8(clamping: digits)), lowest >= 1,
            highest >= 2 * lowest, payloadLength == bytes.count - headerSize
        else { return nil }
        var h = Histogram<UInt64>(lowestDiscernibleValue: lowest, highestTrackableValue: highest,
                                  numberOfSignificantValueDigits: sig)
        let layout = Layout(lowest: lowest, digits: digits)
        let limit = layout.index(of: highest) + 1
        var at = headerSize
        var index = 0
        while at < bytes.count {
            guard let v = getZigZag(bytes, &at) else { return nil }
            if v < 0 {
                index += Int(-v)
            } else {
                guard index < limit else { return nil }
                if v > 0 { _ = h.record(layout.value(at: index), count: UInt64(v)) }
                index += 1
            }
            guard index <= limit else { return nil }
        }
        return h
    }

    // MARK: - Bytes

    static func put32(_ v: UInt32, _ out: inout [UInt8]) {
        for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }

    static func put64(_ v: UInt64, _ out: inout [UInt8]) {
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }

    static func get32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(b[at + $1]) }
    }

    static func get64(_ b: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(b[at + $1]) }
    }

    /// ZigZag, then LEB128 (at most nine bytes: the ninth carries eight bits).
    static func putZigZag(_ v: Int64, _ out: inout [UInt8]) {
        var u = UInt64(bitPattern: (v << 1) ^ (v >> 63))
        for _ in 0..<8 {
            if u < 0x80 {
                out.append(UInt8(u))
                return
            }
            out.append(UInt8(u & 0x7f) | 0x80)
            u >>= 7
        }
        out.append(UInt8(truncatingIfNeeded: u))
    }

    static func getZigZag(_ b: [UInt8], _ at: inout Int) -> Int64? {
        var u: UInt64 = 0
        for k in 0..<9 {
            guard at < b.count else { return nil }
            let byte = b[at]
            at += 1
            if k == 8 {
                u |= UInt64(byte) << 56
                break
            }
            u |= UInt64(byte & 0x7f) << UInt64(7 * k)
            if byte < 0x80 { break }
        }
        return Int64(bitPattern: u >> 1) ^ -Int64(bitPattern: u & 1)
    }
}

/// RFC 4648 base64 (with padding), for the histogram log; no Foundation in the engine.
enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            let v = (UInt32(bytes[i]) << 16) | (n > 1 ? UInt32(bytes[i + 1]) << 8 : 0) | (n > 2 ? UInt32(bytes[i + 2]) : 0)
            for k in 0..<4 {
                out.append(k <= n ? alphabet[Int((v >> UInt32(18 - 6 * k)) & 63)] : UInt8(ascii: "="))
            }
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        var table = [Int16](repeating: -1, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = Int16(i) }
        let chars = Array(text.utf8).filter { $0 != UInt8(ascii: "\n") && $0 != UInt8(ascii: "\r") }
        guard chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 4 * 3)
        var i = 0
        while i < chars.count {
            var v: UInt32 = 0
            var pad = 0
            for k in 0..<4 {
                let c = chars[i + k]
                if c == UInt8(ascii: "=") && i + 4 == chars.count && k >= 2 {
                    pad += 1
                    v <<= 6
                    continue
                }
                guard pad == 0, table[Int(c)] >= 0 else { return nil }
                v = v << 6 | UInt32(table[Int(c)])
            }
            out.append(UInt8(truncatingIfNeeded: v >> 16))
            if pad < 2 { out.append(UInt8(truncatingIfNeeded: v >> 8)) }
            if pad < 1 { out.append(UInt8(truncatingIfNeeded: v)) }
            i += 4
        }
        return out
    }
}
