// A one-shot gate threads wait at until it opens with a value (the run's ready time). A
// condition variable rather than polling: the thread model may have thousands of waiters.
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
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }

    /// Opens the gate with `v` (non-zero); later calls change nothing.
    func open(_ v: Int64) {
        pthread_mutex_lock(mutex)
        if value.load(ordering: .acquiring) == 0 { value.store(v, ordering: .releasing) }
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }

    /// Waits until the gate is open. - Returns: its value.
    func wait() -> Int64 {
        let v = value.load(ordering: .acquiring)
        if v != 0 { return v }
        pthread_mutex_lock(mutex)
        while value.load(ordering: .acquiring) == 0 { pthread_cond_wait(cond, mutex) }
        pthread_mutex_unlock(mutex)
        return value.load(ordering: .acquiring)
    }
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline` (nanoseconds).
func sleepUntil(_ deadline: Int64) {
    var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
}
