// SPDX-License-Identifier: Apache-2.0
// The clock every part of echod reads (CLOCK_MONOTONIC, in nanoseconds as Int64) and the one
// conversion from Swift's Duration into it.
import Glibc

/// Monotonic clock in nanoseconds (`CLOCK_MONOTONIC`). The corresponding C function is
/// `clock_gettime(2)`.
@inline(__always)
public func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Converts a `Duration` to nanoseconds.
public func nanoseconds(_ d: Duration) -> Int64 {
    let c = d.components
    return c.seconds * 1_000_000_000 + c.attoseconds / 1_000_000_000
}
