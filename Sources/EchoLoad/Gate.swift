// SPDX-License-Identifier: Apache-2.0
// A one-shot gate threads wait at until it opens with a value (a time: the connect epoch, the
// start of the run, the moment it was told to stop). A condition variable rather than polling:
// the thread model may have thousands of waiters. Its clock is CLOCK_MONOTONIC, so timed waits
// (`sleep(until:)`) share the run's clock.
import Glibc
import Synchronization

final class Gate: @unchecked Sendable {
    // @unchecked: the pthread objects live at stable heap addresses and are used only through
    // pthread calls, which synchronise.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    private let value = Atomic<Int64>(0)

    init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }

    /// Opens the gate with `v` (non-zero); later calls change nothing.
    /// - Returns: whether this call opened it.
    @discardableResult
    func open(_ v: Int64) -> Bool {
        pthread_mutex_lock(mutex)
        let first = value.load(ordering: .acquiring) == 0
        if first { value.store(v, ordering: .releasing) }
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
        return first
    }

    /// The value the gate opened with, or 0 while it is closed.
    var current: Int64 { value.load(ordering: .acquiring) }

    /// Waits until the gate is open. - Returns: its value.
    func wait() -> Int64 {
        let v = value.load(ordering: .acquiring)
        if v != 0 { return v }
        pthread_mutex_lock(mutex)
        while value.load(ordering: .acquiring) == 0 { pthread_cond_wait(cond, mutex) }
        pthread_mutex_unlock(mutex)
        return value.load(ordering: .acquiring)
    }

    /// Sleeps until CLOCK_MONOTONIC reaches `deadline` (nanoseconds) or the gate opens.
    /// - Returns: true if the deadline came with the gate still closed.
    func sleep(until deadline: Int64) -> Bool {
        if value.load(ordering: .acquiring) != 0 { return false }
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_mutex_lock(mutex)
        while value.load(ordering: .acquiring) == 0 {
            if pthread_cond_timedwait(cond, mutex, &ts) == ETIMEDOUT { break }
        }
        pthread_mutex_unlock(mutex)
        return value.load(ordering: .acquiring) == 0
    }
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline` (nanoseconds).
func sleepUntil(_ deadline: Int64) {
    var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
}
