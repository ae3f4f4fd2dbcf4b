// SPDX-License-Identifier: Apache-2.0

import CEchoShims
import Glibc
import Logging

/// The event model: a pool of epoll worker threads (see `Worker`), each accepting and echoing
/// on its own. It needs nothing from the control loop, which only waits for a stop to finish.
public final class EventModel: ServingModel {
    private let pool: WorkerPool
    private let workers: Int
    private var stopping = false

    /// `Workers=`, with 0 meaning one per CPU this process may run on.
    static func workerCount(_ configuration: Configuration) -> Int {
        configuration.workers > 0 ? configuration.workers : Int(CEchoShims_available_cpus())
    }

    /// - Throws: `SystemError` if an epoll instance or eventfd cannot be made.
    public init(configuration: Configuration, context: ModelContext) throws(SystemError) {
        workers = Self.workerCount(configuration)
        pool = try WorkerPool(
            listeners: context.listeners, datagramSockets: context.datagramSockets,
            datagramPolicy: context.datagramPolicy, workerCount: workers,
            maxConnections: context.maxConnections, heartbeatMilliseconds: context.heartbeatMilliseconds,
            logger: context.logger, sources: context.sources)
    }

    /// Each worker's epoll instance and eventfd.
    public static func descriptorReserve(_ configuration: Configuration) -> Int {
        2 * workerCount(configuration)
    }

    public func start() throws(SystemError) { try pool.start() }

    public func beginStop(deadline: Int64) {
        stopping = true
        pool.stop(deadline: deadline)
    }

    public var isStopped: Bool {
        guard stopping, pool.allFinished else { return false }
        pool.join()
        return true
    }

    public func setMaxConnections(_ limit: Int) { pool.setMaxConnections(limit) }

    public func snapshot() -> ServerSnapshot { pool.snapshot() }

    public func progress() -> [UInt64] { pool.heartbeats() }

    /// Test-only (`[Debug] WatchdogTestTrigger=yes`): makes worker 0 hang.
    func hangWorkerForTest() { pool.hangFirstWorker() }

    public var summary: String { "event model, \(workers) worker\(workers == 1 ? "" : "s")" }

    public var servingMetadata: Logger.Metadata { ["workers": "\(workers)"] }
}
