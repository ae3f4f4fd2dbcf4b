// SPDX-License-Identifier: Apache-2.0

import Glibc
import Synchronization

/// State every worker of a pool reads and the control thread writes: the connection limit,
/// the stop request, and the count of open connections that enforces `MaxConnections=`.
public final class PoolControl: Sendable {
    /// Connections open across all workers.
    let openConnections = Atomic<Int>(0)
    /// The `MaxConnections=` in force (changed by a reload).
    let maxConnections: Atomic<Int>
    /// Set once when a graceful stop begins.
    let stopping = Atomic<Bool>(false)
    /// Monotonic deadline (nanoseconds, CLOCK_MONOTONIC) after which draining workers close
    /// whatever is left.
    let stopDeadline = Atomic<Int64>(Int64.max)
    /// The hand-over channel's sending end at a restart (set before `stopping`), or -1 for a
    /// graceful stop.
    let handoverSender = Atomic<Int32>(-1)
    /// Test-only: set by SIGUSR1 with `[Debug] WatchdogTestTrigger=yes`; worker 0 then hangs.
    let hangRequested = Atomic<Bool>(false)
    /// Longest a worker waits in epoll_wait before turning its loop (and heartbeat) again.
    let heartbeatMilliseconds: Atomic<Int>
    /// Workers that stopped accepting at the limit and wait to be woken when a slot frees.
    let pausedWorkers = Atomic<Int>(0)

    init(maxConnections: Int, heartbeatMilliseconds: Int) {
        self.maxConnections = Atomic(maxConnections)
        self.heartbeatMilliseconds = Atomic(heartbeatMilliseconds)
    }

    /// Takes one connection slot if the limit allows.
    /// - Returns: false when at the limit (the caller stops accepting).
    ///
    /// Sequentially consistent, with `releaseConnection` and `pausedWorkers`: a worker that
    /// pauses (increments `pausedWorkers`, then reads `hasRoom`) and a worker that releases
    /// (decrements `openConnections`, then reads `pausedWorkers`) must not both read the old
    /// value, or the pause is never undone (the store-buffering pattern).
    @inline(__always)
    func reserveConnection() -> Bool {
        var current = openConnections.load(ordering: .sequentiallyConsistent)
        let limit = maxConnections.load(ordering: .relaxed)
        while current < limit {
            let (exchanged, original) = openConnections.compareExchange(
                expected: current, desired: current + 1, ordering: .sequentiallyConsistent)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Gives a slot back.
    /// - Returns: true when some worker is paused at the limit and should be woken to look again.
    @inline(__always)
    func releaseConnection() -> Bool {
        openConnections.subtract(1, ordering: .sequentiallyConsistent)
        return pausedWorkers.load(ordering: .sequentiallyConsistent) > 0
    }

    /// True while a new connection would fit under the limit.
    var hasRoom: Bool {
        openConnections.load(ordering: .sequentiallyConsistent) < maxConnections.load(ordering: .relaxed)
    }
}

/// A worker's running totals, written by the worker once per event batch (not per message) and
/// read by the control thread for `STATUS=` and the watchdog.
public final class WorkerCounters: Sendable {
    /// Connections accepted since start.
    public let accepted = Atomic<UInt64>(0)
    /// Connections currently open in this worker.
    public let open = Atomic<Int>(0)
    /// Bytes written back to clients since start.
    public let bytesEchoed = Atomic<UInt64>(0)
    /// Incremented on each pass through the worker loop; a worker that stops advancing it is hung.
    public let heartbeat = Atomic<UInt64>(0)
    /// Errors from accept that made the worker back off (EMFILE and friends).
    public let acceptBackoffs = Atomic<UInt64>(0)
    /// Connections sent on the hand-over channel at a restart.
    public let handedOver = Atomic<Int>(0)

    public init() {}
}

/// An atomic integer that can be shared by reference between threads.
public final class SharedCounter: Sendable {
    public let value = Atomic<Int>(0)
    public init() {}
}
