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
}
