// The interface between the daemon's control loop and a concurrency model, kept as small as
// redis keeps its event-loop backends: start, a few descriptors and signals to watch on the
// model's behalf, a stop, and figures for STATUS=.
//
// The control loop runs on the daemon's main thread. The event model does its work on worker
// threads and asks nothing of the loop; the thread and fork models accept in the loop itself
// (the classic design), which is also what keeps the fork model's parent single-threaded.
import Glibc

/// Totals of a serving model at one moment, for `STATUS=` and logs.
public struct ServerSnapshot: Equatable, Sendable {
    /// Connections accepted since start.
    public var accepted: UInt64 = 0
    /// Connections open now.
    public var open: Int = 0
    /// Bytes written back to clients since start (the fork model's children report in batches).
    public var bytesEchoed: UInt64 = 0
    /// Times accepting paused after a resource error (EMFILE, EAGAIN from pthread_create/fork).
    public var acceptBackoffs: UInt64 = 0
    public init() {}
}

/// Settings a model takes at start, resolved from the configuration by the daemon.
public struct ModelSettings: Sendable {
    /// Listening sockets (non-blocking, close-on-exec), owned by the daemon.
    public var listeners: [Int32]
    /// Most connections open at once (already combined with the model's own limit).
    public var maxConnections: Int
    /// Event model: worker threads.
    public var workers: Int
    /// Thread model: stack size of each connection thread, in bytes.
    public var threadStackSize: Int
    /// Longest an idle worker goes without advancing its progress counter (the watchdog checks
    /// progress at a fraction of WatchdogSec=).
    public var heartbeatMilliseconds: Int

    public init(
        listeners: [Int32], maxConnections: Int, workers: Int, threadStackSize: Int,
        heartbeatMilliseconds: Int = 1000
    ) {
        self.listeners = listeners
        self.maxConnections = maxConnections
        self.workers = workers
        self.threadStackSize = threadStackSize
        self.heartbeatMilliseconds = heartbeatMilliseconds
    }
}

/// A way of serving connections, driven by the daemon's control loop.
public protocol ServingModel: AnyObject {
    /// Starts serving; returns once every listener is being served (so READY=1 is true).
    func start() throws(SystemError)

    /// Descriptors the control loop should poll for input on the model's behalf. Read again
    /// after every call into the model (a model stops polling its listeners at its limit).
    var controlDescriptors: [Int32] { get }

    /// One of `controlDescriptors` is readable.
    func controlDescriptorReadable(_ fd: Int32)

    /// A signal the daemon routes to the model (SIGCHLD), with the pid that sent it.
    func handleSignal(_ signal: Int32, from pid: pid_t)

    /// Called from the control loop at least every `tickInterval` while the model wants it.
    func tick(now: Int64)

    /// How soon the model wants `tick` again, in nanoseconds, or nil for "no need".
    var tickInterval: Int64? { get }

    /// Stops accepting and starts finishing what was received.
    /// - Parameter deadline: CLOCK_MONOTONIC nanoseconds after which what is left is closed.
    func beginStop(deadline: Int64)

    /// True once a stop has completed (every connection closed).
    var isStopped: Bool { get }

    /// Changes the connection limit (a reload).
    func setMaxConnections(_ limit: Int)

    /// Current totals.
    func snapshot() -> ServerSnapshot

    /// One counter per worker that advances while the worker makes progress (its loop turning);
    /// the watchdog pings systemd only while every one of them does. Empty when the control
    /// loop is the only thing to watch.
    func progress() -> [UInt64]

    /// Test-only: makes a worker hang so the watchdog's reaction can be tested. Models without
    /// worker threads ignore it.
    func hangWorkerForTest()

    /// Short description for STATUS= and logs, e.g. "event model, 2 workers".
    var summary: String { get }
}

/// Converts a `Duration` to nanoseconds.
public func nanoseconds(_ d: Duration) -> Int64 {
    let c = d.components
    return c.seconds * 1_000_000_000 + c.attoseconds / 1_000_000_000
}
