// SPDX-License-Identifier: Apache-2.0

import Glibc
import Logging
import Synchronization

/// The event model's pool of epoll workers sharing the listening sockets.
public final class WorkerPool: @unchecked Sendable {
    // @unchecked: `threads` is written by `start` and read by `join`, both on the control thread.

    private let workers: [Worker]
    private let control: PoolControl
    private var threads: [JoinableThread] = []
    private let startedLatch: EventFD
    private let finished = SharedCounter()

    /// True once every worker thread has left its loop (after a stop).
    public var allFinished: Bool { finished.value.load(ordering: .acquiring) == workers.count }

    /// Per-worker counters, for status lines and the watchdog.
    public var counters: [WorkerCounters] { workers.map(\.counters) }

    /// Creates the workers and registers the listeners with each (nothing runs yet).
    ///
    /// - Parameters:
    ///   - listeners: listening sockets, non-blocking; owned by the caller and kept open while
    ///     the pool runs.
    ///   - workerCount: number of worker threads (at least 1).
    ///   - maxConnections: the limit on open connections across all workers.
    ///   - logger: base logger; workers add `worker.index`.
    ///   - sources: the per-source table every accepted connection is admitted through, if any.
    /// - Throws: `SystemError` if an epoll instance or eventfd cannot be made.
    ///   - heartbeatMilliseconds: longest an idle worker waits before its heartbeat advances.
    ///   - datagramSockets, datagramPolicy: UDP sockets every worker serves with the UDP echo.
    public init(
        listeners: [Int32], datagramSockets: [Int32] = [], datagramPolicy: DatagramPolicy? = nil,
        workerCount: Int, maxConnections: Int, heartbeatMilliseconds: Int = 1000, logger: Logger,
        sources: SourceTable? = nil
    ) throws(SystemError) {
        precondition(workerCount >= 1)
        precondition(listeners.count <= 0xFFFF && datagramSockets.count <= 0xFFFF)
        control = PoolControl(maxConnections: maxConnections, heartbeatMilliseconds: heartbeatMilliseconds)
        var workers: [Worker] = []
        for i in 0..<workerCount {
            workers.append(
                try Worker(
                    index: i, listeners: listeners, datagramSockets: datagramSockets, datagramPolicy: datagramPolicy,
                    control: control, logger: logger, sources: sources))
        }
        let wakeups = workers.map { $0.wakeup.descriptor.rawValue }
        for w in workers { w.setPeers(wakeups) }
        self.workers = workers
        startedLatch = try EventFD()
    }

    /// Starts one thread per worker and returns once every one of them is running its loop, so a
    /// caller may report readiness (`READY=1`) knowing every listener is being served.
    ///
    /// - Throws: `SystemError` if a thread cannot be started (threads already started are stopped).
    public func start() throws(SystemError) {
        for w in workers {
            let latch = startedLatch.descriptor.rawValue
            let finished = self.finished
            do {
                threads.append(
                    try JoinableThread(name: "echod-w\(w.index)") {
                        EventFD.add(1, to: latch)
                        w.run()
                        finished.value.add(1, ordering: .releasing)
                    })
            } catch {
                stop(deadline: monotonicNanoseconds())
                join()
                throw error
            }
        }
        // Each worker adds 1 to the eventfd as its thread starts; wait for all of them.
        var started: UInt64 = 0
        var pfd = pollfd(fd: startedLatch.descriptor.rawValue, events: Int16(POLLIN), revents: 0)
        while started < UInt64(workers.count) {
            _ = poll(&pfd, 1, 1000)
            started += startedLatch.drain()
        }
    }

    /// Asks every worker to stop accepting, echo what it has received, and close.
    /// - Parameter deadline: CLOCK_MONOTONIC nanoseconds after which remaining connections are closed.
    public func stop(deadline: Int64) {
        control.stopDeadline.store(deadline, ordering: .relaxed)
        control.stopping.store(true, ordering: .releasing)
        for w in workers { w.wakeup.wake() }
    }

    /// Waits for every worker thread to finish.
    public func join() {
        for t in threads { t.join() }
        threads.removeAll()
    }

    /// Changes the connection limit while running (a reload).
    public func setMaxConnections(_ limit: Int) {
        control.maxConnections.store(limit, ordering: .relaxed)
        for w in workers { w.wakeup.wake() }
    }

    /// Test-only: makes worker 0 hang (see `[Debug] WatchdogTestTrigger=`).
    public func hangFirstWorker() {
        control.hangRequested.store(true, ordering: .relaxed)
        workers[0].wakeup.wake()
    }

    /// Snapshot of the totals across workers.
    public func snapshot() -> ServerSnapshot {
        var s = ServerSnapshot()
        for c in counters {
            s.accepted &+= c.accepted.load(ordering: .relaxed)
            s.open += c.open.load(ordering: .relaxed)
            s.bytesEchoed &+= c.bytesEchoed.load(ordering: .relaxed)
            s.acceptBackoffs &+= c.acceptBackoffs.load(ordering: .relaxed)
        }
        return s
    }

    /// Heartbeat counter of each worker, for detecting a hung worker.
    public func heartbeats() -> [UInt64] {
        workers.map { $0.counters.heartbeat.load(ordering: .relaxed) }
    }
}
