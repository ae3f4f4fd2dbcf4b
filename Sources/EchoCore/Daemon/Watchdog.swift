// SPDX-License-Identifier: Apache-2.0
// systemd's watchdog (`WatchdogSec=`): the daemon pings at half the interval, and only while
// every worker is making progress, so a hung worker gets the service restarted.

/// Decides, at half the watchdog interval, whether to send `WATCHDOG=1`: only when every
/// worker's progress counter has moved since the last check.
struct Watchdog {
    enum Verdict: Equatable {
        case ping
        /// Workers (by index) whose counter has not moved: no ping (logged once per stall).
        case stalled([Int])
        /// Stalled, and already reported.
        case quiet
    }

    let interval: Int64?
    private(set) var nextCheck: Int64?
    private var last: [UInt64] = []
    private var reported = false

    init(interval: Int64?, start: Int64) {
        self.interval = interval
        nextCheck = interval.map { start + $0 / 2 }
    }

    mutating func check(_ progress: [UInt64], now: Int64) -> Verdict {
        if let interval { nextCheck = now + interval / 2 }
        defer { last = progress }
        let stuck = progress.indices.filter { $0 < last.count && progress[$0] == last[$0] }
        if stuck.isEmpty {
            reported = false
            return .ping
        }
        if reported { return .quiet }
        reported = true
        return .stalled(stuck)
    }

    /// How long an idle worker may go without turning its loop: a quarter of the watchdog
    /// interval (nanoseconds, nil when off), at most a second, so that idleness is never mistaken
    /// for a hang.
    static func heartbeatMilliseconds(interval: Int64?) -> Int {
        guard let w = interval else { return 1000 }
        return Int(min(1000, max(20, w / 4 / 1_000_000)))
    }
}
