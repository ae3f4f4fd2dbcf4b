// SPDX-License-Identifier: Apache-2.0
// Round-trip latency: how it is recorded (HdrHistogram, nanoseconds).
import Histogram

/// Round-trip latencies in nanoseconds, 1 ns to 100 s at three significant digits.
public enum Latency {
    public static let highest: UInt64 = 100_000_000_000

    public static func makeHistogram() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: highest, numberOfSignificantValueDigits: .three)
    }

    /// Records `nanoseconds`, clamped into the histogram's range.
    @inline(__always)
    public static func record(_ nanoseconds: Int64, into h: inout Histogram<UInt64>) {
        _ = h.record(UInt64(min(max(nanoseconds, 1), Int64(highest))))
    }

    /// A histogram rebuilt from its non-empty buckets as (value, count) pairs and its exact
    /// extremes (how a child's tally and an interval travel): the extremes are recorded once
    /// each, taken out of their buckets' counts, so the min/max trackers come back exact; the
    /// rest at a value of the same bucket that lies between them, so every count lands in its
    /// bucket and a merge equals an in-process `add`.
    static func histogram(pairs: [(UInt64, UInt64)], min lo: UInt64, max hi: UInt64) -> Histogram<UInt64> {
        var h = makeHistogram()
        var pairs = pairs
        let total = pairs.reduce(0) { $0 + $1.1 }
        for (k, extreme) in [lo, hi].enumerated() where UInt64(k) < total {
            if let i = pairs.firstIndex(where: { $0.1 > 0 && h.valuesAreEquivalent($0.0, extreme) }) {
                pairs[i].1 -= 1
                _ = h.record(extreme)
            }
        }
        for (v, c) in pairs where c > 0 { _ = h.record(Swift.min(Swift.max(v, lo), hi), count: c) }
        return h
    }
}
