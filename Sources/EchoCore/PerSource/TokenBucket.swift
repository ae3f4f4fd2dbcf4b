// SPDX-License-Identifier: Apache-2.0
// The per-source rate limit's token bucket, kept as one number per source.
//
// A bucket of `burst` tokens refilled at `rate` per second is the same thing as the Generic Cell
// Rate Algorithm (GCRA, ITU-T I.371): instead of a token count and a refill time, each source
// keeps its theoretical arrival time (TAT), the moment its bucket would be full again. An
// arrival at `now` conforms when TAT - now <= (burst - 1) * interval, and then moves TAT one
// interval on. One Int64 per source, no division at arrival, exact in integer nanoseconds, and a
// bucket is full (the source has nothing to remember) exactly when TAT <= now.

/// A token bucket: `burst` tokens, one more every `interval` nanoseconds.
public struct TokenBucket: Sendable, Equatable, CustomStringConvertible {
    /// Nanoseconds per token (1 s / rate).
    public let interval: Int64
    /// How far ahead of now a source's TAT may be and still conform: (burst - 1) * interval.
    public let tolerance: Int64

    /// - Parameters:
    ///   - millisPerSecond: tokens per 1000 seconds (the rate in thousandths per second), at least 1.
    ///   - burst: tokens a full bucket holds, at least 1.
    public init(millisPerSecond: Int, burst: Int) {
        precondition(millisPerSecond >= 1 && burst >= 1)
        interval = max(1, 1_000_000_000_000 / Int64(millisPerSecond))
        tolerance = Int64(burst - 1) * interval
    }

    /// Tokens a full bucket holds.
    public var burst: Int { Int(tolerance / interval) + 1 }

    /// Takes a token if the bucket has one.
    ///
    /// - Parameters:
    ///   - tat: the source's theoretical arrival time (CLOCK_MONOTONIC nanoseconds; 0 for a
    ///     source never seen, whose bucket is full); moved on when a token is taken.
    ///   - now: CLOCK_MONOTONIC nanoseconds.
    /// - Returns: whether a token was taken.
    @inline(__always)
    public func take(_ tat: inout Int64, now: Int64) -> Bool {
        let start = max(tat, now)
        guard start - now <= tolerance else { return false }
        tat = start + interval
        return true
    }

    /// Whether a source whose TAT is `tat` has a full bucket at `now` (forgetting it loses nothing).
    @inline(__always)
    public static func isFull(_ tat: Int64, now: Int64) -> Bool { tat <= now }

    public var description: String { "\(burst) tokens, one per \(interval) ns" }
}
