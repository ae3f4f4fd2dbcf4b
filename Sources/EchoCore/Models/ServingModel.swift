// SPDX-License-Identifier: Apache-2.0
// The interface between the daemon's lifecycle and a concurrency model, kept as small as redis
// keeps its event-loop backends: built from the configuration, started, stopped, and asked for
// figures. What only the models that accept on the control thread need (descriptors to poll,
// signals, ticks) is the narrower `ControlLoopModel`.
//
// Shaped for what comes next:
// - a supervisor of several worker processes holds one `ServingModel` per process, or is itself
//   one (its `progress()` a counter per process);
// - a hand-over of open connections at restart enters through `ModelContext` (today: the
//   listeners; tomorrow: inherited connections), never through the daemon's internals;
// - a second event backend (io_uring beside epoll) is another `Worker` loop under `EventModel`
//   or another model type; `ConcurrencyModel.servingModel` is the one place that maps names to types.
import Glibc
import Logging

/// What every model is given at construction besides the configuration.
public struct ModelContext {
    /// Listening sockets (non-blocking, close-on-exec), owned by the daemon, open while the model runs.
    public var listeners: [Int32]
    /// Most connections open at once, already resolved (see `ServingModel.connectionLimit`).
    public var maxConnections: Int
    /// Longest an idle worker goes without advancing its progress counter (the watchdog checks
    /// progress at a fraction of `WatchdogSec=`).
    public var heartbeatMilliseconds: Int
    public var logger: Logger
    /// UDP sockets (non-blocking, close-on-exec), owned by the daemon, served with the UDP echo.
    public var datagramSockets: [Int32]
    /// What the UDP echo refuses; nil when there is no UDP socket.
    public var datagramPolicy: DatagramPolicy?
    /// The service's per-source table (`MaxConnectionsPerSource=`, `MaxConnectionRatePerSource=`):
    /// every accepted connection is admitted through it and released when it ends. Nil: no
    /// per-source accounting (unit tests of a model).
    public var sources: SourceTable?

    public init(
        listeners: [Int32], datagramSockets: [Int32] = [], datagramPolicy: DatagramPolicy? = nil, maxConnections: Int,
        heartbeatMilliseconds: Int = 1000, logger: Logger, sources: SourceTable? = nil
    ) {
        self.listeners = listeners
        self.datagramSockets = datagramPolicy == nil ? [] : datagramSockets
        self.datagramPolicy = datagramPolicy
        self.maxConnections = maxConnections
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.logger = logger
        self.sources = sources
    }
}

/// A way of serving connections, as the daemon's lifecycle sees it.
public protocol ServingModel: AnyObject {
    /// Builds the model (nothing runs until `start`).
    /// - Throws: `SystemError` when a resource the model needs cannot be made.
    init(configuration: Configuration, context: ModelContext) throws(SystemError)

    /// Descriptors the model uses besides one per connection and the daemon's own, kept back
    /// from `MaxConnections=auto` (the event model's epoll and eventfd per worker).
    static func descriptorReserve(_ configuration: Configuration) -> Int

    /// The model's own cap on connections (`MaxThreads=`, `MaxChildren=`), if it has one.
    static func connectionCap(_ configuration: Configuration) -> Int?

    /// Starts serving; returns once every listener is being served (so READY=1 is true).
    func start() throws(SystemError)

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
    /// the watchdog pings systemd only while every one of them does.
    func progress() -> [UInt64]

    /// Short description for STATUS= and logs, e.g. "event model, 2 workers".
    var summary: String { get }

    /// Extra fields for the "serving" log line (e.g. `workers`).
    var servingMetadata: Logger.Metadata { get }
}

extension ServingModel {
    /// Models without workers of their own have nothing to watch beyond the control loop, which
    /// is what sends the pings: a connection thread or child blocked in recv() is idle, not hung.
    public func progress() -> [UInt64] { [] }

    public var servingMetadata: Logger.Metadata { [:] }

    public static func connectionCap(_ configuration: Configuration) -> Int? { nil }

    public static func descriptorReserve(_ configuration: Configuration) -> Int { 0 }

    /// `MaxConnections=` resolved for this model: `auto` is the open-file soft limit less the
    /// daemon's reserve and the model's, and the model's own cap applies on top.
    ///
    /// - Parameters:
    ///   - configuration: the configuration in force.
    ///   - openFileLimit: the `RLIMIT_NOFILE` soft limit.
    ///   - daemonReserve: descriptors the daemon keeps for listeners, logs, the signalfd.
    public static func connectionLimit(_ configuration: Configuration, openFileLimit: UInt64, daemonReserve: Int) -> Int {
        var limit: Int
        switch configuration.maxConnections {
        case .limit(let n):
            limit = n
        case .auto:
            let usable = min(openFileLimit, UInt64(Int32.max))
            limit = max(1, Int(usable) - daemonReserve - descriptorReserve(configuration))
        }
        if let cap = connectionCap(configuration) { limit = min(limit, cap) }
        return limit
    }
}

/// A model that accepts on the daemon's control thread, the classic design (thread and fork):
/// the control loop polls the model's descriptors, passes it SIGCHLD, and ticks it.
public protocol ControlLoopModel: ServingModel {
    /// Descriptors the control loop should poll for input on the model's behalf. Read again
    /// after every call into the model (a model stops polling its listeners at its limit).
    var controlDescriptors: [Int32] { get }

    /// One of `controlDescriptors` is readable.
    func controlDescriptorReadable(_ fd: Int32)

    /// A child process ended (SIGCHLD), with the pid the signal names.
    func childExited(_ pid: pid_t)

    /// Called from the control loop at least every `tickInterval` while the model wants it.
    func tick(now: Int64)

    /// How soon the model wants `tick` again, in nanoseconds, or nil for "no need".
    var tickInterval: Int64? { get }
}

extension ControlLoopModel {
    /// Models without child processes ignore SIGCHLD.
    public func childExited(_ pid: pid_t) {}
}

extension ConcurrencyModel {
    /// The type that implements the model: the one place that maps a `Model=` name to code.
    public var servingModel: any ServingModel.Type {
        switch self {
        case .event: return EventModel.self
        case .thread: return ThreadModel.self
        case .fork: return ForkModel.self
        }
    }
}
