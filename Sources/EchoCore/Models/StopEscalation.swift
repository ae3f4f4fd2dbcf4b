// SPDX-License-Identifier: Apache-2.0
// How the thread and fork models stop connections that sit in blocking calls: ask (a signal
// that interrupts recv(2)), ask again every 100 ms, because a signal that lands just before a
// connection enters recv() only sets a flag that is already set, and force what is left at the
// stop deadline. The control loop turns for every connection that ends during a stop; asking
// every other connection each time would be quadratic, hence the fixed cadence.

/// The cadence of a graceful stop of blocking connections.
struct StopEscalation {
    /// Time between rounds, in nanoseconds.
    static let period: Int64 = 100_000_000

    /// CLOCK_MONOTONIC nanoseconds after which what is left is forced; nil until a stop begins.
    private(set) var deadline: Int64?
    private var lastRound: Int64 = 0
    /// Whether the deadline has passed and the connections left were forced.
    private(set) var forced = false

    /// What to do on this tick.
    enum Step: Equatable {
        /// Not stopping, or the last round was under `period` ago.
        case wait
        /// Ask every connection again.
        case ask
        /// The deadline has passed: force the connections left; `first` on the first such round.
        case force(first: Bool)
    }

    var isStopping: Bool { deadline != nil }

    /// Nanoseconds until the next round is due, while stopping.
    func nextRound(now: Int64) -> Int64? {
        deadline == nil ? nil : lastRound + Self.period - now
    }

    /// Starts the stop; the caller asks every connection once now.
    mutating func begin(deadline: Int64, now: Int64) {
        self.deadline = deadline
        lastRound = now
    }

    /// The step due at `now`.
    mutating func step(now: Int64) -> Step {
        guard let deadline, now - lastRound >= Self.period else { return .wait }
        lastRound = now
        guard now >= deadline else { return .ask }
        defer { forced = true }
        return .force(first: !forced)
    }
}
