import Glibc
import Logging

/// The event model: a pool of epoll worker threads (see `Worker`). It needs nothing from the
/// control loop; the loop only waits for the workers to finish a stop.
public final class EventModel: ServingModel {
    private let pool: WorkerPool
    private let workers: Int
    private var stopping = false

    /// - Throws: `SystemError` if an epoll instance or eventfd cannot be made.
    public init(settings: ModelSettings, logger: Logger) throws(SystemError) {
        workers = settings.workers
        pool = try WorkerPool(
            listeners: settings.listeners, workerCount: settings.workers,
            maxConnections: settings.maxConnections, heartbeatMilliseconds: settings.heartbeatMilliseconds,
            logger: logger)
    }

    public func start() throws(SystemError) { try pool.start() }
    public var controlDescriptors: [Int32] { [] }
    public func controlDescriptorReadable(_ fd: Int32) {}
    public func handleSignal(_ signal: Int32, from pid: pid_t) {}
    public func tick(now: Int64) {}
    public var tickInterval: Int64? { stopping ? 20_000_000 : nil }

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

    public func hangWorkerForTest() { pool.hangFirstWorker() }

    public var summary: String { "event model, \(workers) worker\(workers == 1 ? "" : "s")" }
}
