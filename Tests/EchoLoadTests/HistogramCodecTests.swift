// SPDX-License-Identifier: Apache-2.0
// Issue 11 item 8: echoload's latency histograms in the HdrHistogram interchange format. The
// reference below was written by the HdrHistogram Python implementation (hdrhistogram 0.10.8 on
// PyPI, `HdrHistogram(1, 3600000000000, 3)`, the values of `recorded`, `.encode()`): echoload must
// read it, and write the same bytes before compression.
import EchoLoad
import Histogram
import Testing

@testable import EchoLoad

@Suite struct HistogramCodecTests {
    static let recorded: [(UInt64, UInt64)] = [
        (1, 1), (1000, 5), (2047, 2), (2048, 3), (123_456, 7), (10_000_000, 1), (3_000_000_000, 2),
    ]
    static let reference = "HISTFAAAADN4nJNpmSzMwMAAwiDADKUZgUw3gx0LGOw/QAWYTvNzrRZgYeuP4/ucwrSwmZEFANPoCYc="
    /// The reference, inflated: header (cookie 0x1c849313, 19 payload bytes, offset 0, 3 digits,
    /// lowest 1, highest 3.6e12, ratio 1.0) and the ZigZag LEB128 counts.
    static let referenceRaw =
        "1c849313000000130000000000000003000000000000000100000346" + "30b8a0003ff0000000000000"
        + "0102cb0f0aab1004068f5e0ef36402a1830104"

    static func sample() -> Histogram<UInt64> {
        var h = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000_000,
                                  numberOfSignificantValueDigits: .three)
        for (v, c) in recorded { _ = h.record(v, count: c) }
        return h
    }

    static func hex(_ b: [UInt8]) -> String {
        b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    @Test("the reference implementation's encoding decodes to the recorded counts")
    func decodesReference() throws {
        let h = try #require(HistogramCodec.decode(Self.reference))
        #expect(h.totalCount == Self.recorded.reduce(0) { $0 + $1.1 })
        for (v, c) in Self.recorded { #expect(h.countForValue(v) == c, "value \(v)") }
        #expect(h.highestTrackableValue == 3_600_000_000_000)
        #expect(h.valueAtPercentile(50) == Self.sample().valueAtPercentile(50))
    }

    @Test("the uncompressed encoding is byte for byte the reference's")
    func encodesLikeReference() {
        #expect(Self.hex(HistogramCodec.encodeV2(Self.sample())) == Self.referenceRaw)
    }

    @Test("encode then decode gives the same histogram, for echoload's own latency layout too")
    func roundTrip() throws {
        var latency = Latency.makeHistogram()
        var x: UInt64 = 12345
        for _ in 0..<10_000 {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            Latency.record(Int64(x >> 40) + 1, into: &latency)
        }
        for h in [Self.sample(), latency, Latency.makeHistogram()] {
            let text = HistogramCodec.encode(h)
            #expect(text.hasPrefix("HISTF"))
            let back = try #require(HistogramCodec.decode(text))
            #expect(back.totalCount == h.totalCount)
            #expect(back == h)
        }
    }

    @Test("anything else is refused, never a crash")
    func refusesGarbage() {
        var truncated = Self.reference
        truncated.removeLast(8)
        var wrongCookie = Base64.decode(Self.reference)!
        wrongCookie[3] ^= 0xff
        for text in ["", "HISTFAAA", "not base64 !!", truncated, Base64.encode(wrongCookie),
                     Base64.encode(Array(repeating: 0xff, count: 64))] {
            #expect(HistogramCodec.decode(text) == nil, "\(text)")
        }
    }
}
