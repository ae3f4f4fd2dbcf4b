// SPDX-License-Identifier: Apache-2.0
// Time bounds for everything the harness waits on. Nothing in these tests sleeps as a way
// of synchronising: it polls a condition until a deadline, and the deadline is what turns
// a hang into a failure.
import Glibc

/// A point in monotonic time after which a wait gives up.
struct Deadline {
    let end: ContinuousClock.Instant

    init(_ timeout: Duration) { end = .now + timeout }

    var hasExpired: Bool { ContinuousClock.now >= end }

    var remaining: Duration { max(.zero, end - .now) }

    /// What is left, in whole milliseconds for poll(2), capped at `cap`.
    func remainingMilliseconds(cap: Duration = .seconds(3600)) -> Int32 {
        Int32(min(remaining, cap).milliseconds)
    }
}

extension Duration {
    /// Whole milliseconds, rounded up so that a positive duration never becomes a zero poll timeout.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
    }

    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// Blocks the calling thread for `duration` (used only between polls of a condition).
func pause(_ duration: Duration) {
    let (seconds, attoseconds) = duration.components
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    var remainder = timespec()
    while nanosleep(&request, &remainder) == -1 && errno == EINTR { request = remainder }
}

/// Evaluates `condition` every `interval` until it holds or `timeout` passes.
/// - Returns: whether the condition held before the deadline.
func waitUntil(
    timeout: Duration, interval: Duration = .milliseconds(10), _ condition: () throws -> Bool
) rethrows -> Bool {
    let deadline = Deadline(timeout)
    while true {
        if try condition() { return true }
        if deadline.hasExpired { return false }
        pause(min(interval, deadline.remaining))
    }
}

/// A failure inside the harness: a failed system call (with errno) or a condition not met in time.
struct HarnessError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) { self.description = description }

    /// A failed call, formatted like echod's own errors: "connect: Connection refused (errno 111)".
    static func system(_ call: String, _ code: Int32 = errno) -> HarnessError {
        HarnessError("\(call): \(String(cString: strerror(code))) (errno \(code))")
    }
}
