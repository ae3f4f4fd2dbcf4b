// SPDX-License-Identifier: Apache-2.0

import Glibc

/// A value behind a pthread mutex, for state that threads share and that is not on the echo path
/// (the thread model's table of connection threads, echoload's tallies).
///
/// Why not the standard library's `Mutex`: on Linux it waits with raw futex system calls that
/// ThreadSanitizer does not see, so `make test-sanitize` reports "Swift access race" inside
/// every `Mutex.withLock` (a correct eight-thread program shows it with Swift 6.3.1). TSan
/// intercepts `pthread_mutex_lock`, so with this lock its reports are real ones.
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched with `mutex` held; the mutex lives at a stable heap
    // address (a pthread mutex must not move).
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, the lock held.
    @inline(__always)
    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
