// The daemon's life: start (rlimits, listeners, workers), READY=1, periodic STATUS=, reload on
// SIGHUP, graceful stop on SIGTERM/SIGINT. Signals arrive through a signalfd read by the control
// thread (the thread that called `run`), never through asynchronous handlers.
import CEchoShims
import Glibc
import Logging

/// Exit statuses from sysexits.h that echod uses.
public enum ExitStatus {
    public static let success: Int32 = 0
    /// A runtime failure (a socket that cannot be bound, threads that cannot start).
    public static let failure: Int32 = 1
    /// EX_CONFIG: the configuration is wrong.
    public static let config: Int32 = 78
}

/// A start-up failure: what went wrong, the errno if one applies, and the exit status.
public struct StartupError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var errno: Int32?
    public var exitStatus: Int32

    public init(_ message: String, errno: Int32? = nil, exitStatus: Int32 = ExitStatus.failure) {
        self.message = message
        self.errno = errno
        self.exitStatus = exitStatus
    }

    public var description: String { message }
}

/// Signals the control thread handles; block them (`Signals.block`) before any thread starts.
public let daemonSignals: [Int32] = [SIGHUP, SIGTERM, SIGINT, SIGCHLD]

/// Where the configuration came from, so a reload can read it again.
public struct ConfigurationSource: Sendable {
    public var path: String
    public var explicitlyRequested: Bool

    public init(path: String, explicitlyRequested: Bool) {
        self.path = path
        self.explicitlyRequested = explicitlyRequested
    }
}

extension ConfigurationSource {
    /// Reads the configuration, writing every warning and error to stderr as its own
    /// `file:line: message` line (with a priority prefix under journald), as at start and on
    /// reload alike.
    ///
    /// - Throws: `ConfigurationError` when the configuration is invalid (already reported).
    public func loadReportingDiagnostics() throws(ConfigurationError) -> Configuration {
        do {
            let (loaded, warnings) = try ConfigurationLoader.load(path: path, explicitlyRequested: explicitlyRequested)
            for w in warnings { EchodLogHandler.writeDiagnostic("\(w)", level: .warning) }
            return loaded
        } catch {
            for d in error.diagnostics {
                EchodLogHandler.writeDiagnostic("\(d)", level: d.severity == .error ? .error : .warning)
            }
            throw error
        }
    }
}

/// The echo daemon: owns the listeners and the serving model, and answers signals.
public final class Daemon {
    /// The daemon's lifecycle; each case carries what exists in that state.
    enum State {
        case idle
        case running(ServingModel)
        case stopped
    }

    private var configuration: Configuration
    private let source: ConfigurationSource
    private let notifier: ServiceNotifier
    private var logger: Logger
    private let logLevel: LogLevelSetting
    private let passed: [PassedDescriptor]
    private var state: State = .idle {
        didSet { logger.debug("state changed", metadata: ["state": "\(state)"]) }
    }
    /// Listening sockets, owned here (closed by `closeListeners`).
    private var listeners: [Int32] = []
    private var workerCount = 0
    private var maxConnections = 0

    /// How often `STATUS=` is refreshed.
    public var statusInterval: Duration = .seconds(2)

    /// systemd's `WatchdogSec=`, if set: pings go out at half of it, and only while every worker
    /// is making progress.
    private var watchdogInterval: Int64? {
        notifier.watchdogInterval.map { nanoseconds($0) }
    }

    /// Idle workers turn their loop at least this often (a quarter of the watchdog interval,
    /// at most a second), so that idleness is never mistaken for a hang.
    private var heartbeatMilliseconds: Int {
        guard let w = watchdogInterval else { return 1000 }
        return Int(min(1000, max(20, w / 4 / 1_000_000)))
    }

    /// - Parameters:
    ///   - configuration: the validated configuration.
    ///   - source: where it came from (re-read on SIGHUP).
    ///   - passed: descriptors from socket activation; when non-empty, `Listen=` is not used.
    ///   - notifier: the service manager channel.
    ///   - logLevel: the shared log level, changed by reloads.
    ///   - logger: the daemon's logger.
    public init(
        configuration: Configuration, source: ConfigurationSource, passed: [PassedDescriptor],
        notifier: ServiceNotifier, logLevel: LogLevelSetting, logger: Logger
    ) {
        self.configuration = configuration
        self.source = source
        self.passed = passed
        self.notifier = notifier
        self.logLevel = logLevel
        self.logger = logger
    }

    /// Runs until SIGTERM or SIGINT and a graceful stop.
    ///
    /// The caller must have blocked `daemonSignals` in this thread before starting any thread.
    /// - Throws: `StartupError` if the daemon cannot start; it has then told the service
    ///   manager why (`STATUS=` and `ERRNO=`).
    public func run() throws(StartupError) {
        if configuration.watchdogTestTrigger {
            // Still the only thread: the mask is inherited by every worker.
            Signals.block([SIGUSR1])
            logger.warning("WatchdogTestTrigger=yes: SIGUSR1 will hang a worker (for tests only)")
        }
        let signals = try makeSignalFD()
        let model: ServingModel
        do throws(StartupError) {
            try applyResourceLimits(configuration)
            try openListeners()
            workerCount = configuration.workers > 0 ? configuration.workers : Int(CEchoShims_available_cpus())
            maxConnections = effectiveMaxConnections(configuration)
            ConnectionTimeouts.shared.update(from: configuration)
            model = try makeModel()
        } catch {
            closeListeners()
            let errnoLine = error.errno.map { "\nERRNO=\($0)" } ?? ""
            notifier.notify("STATUS=Failed to start: \(error.message)\(errnoLine)")
            throw error
        }
        state = .running(model)
        var serving: Logger.Metadata = [
            "model": "\(configuration.model.rawValue)", "max_connections": "\(maxConnections)",
            "listeners": "\(listeners.count)",
        ]
        if configuration.model == .event { serving["workers"] = "\(workerCount)" }
        logger.info("serving", metadata: serving)
        var status = StatusReporter(summary: model.summary)
        notifier.notify("READY=1\nSTATUS=\(status.line(model.snapshot()))")

        let stopSignal = controlLoop(signals: signals, model: model, status: &status, stopping: false)
        logger.info("stop requested", metadata: ["signal": "\(signalName(stopSignal))"])

        notifier.notify("STOPPING=1\nSTATUS=Stopping: finishing open connections")
        logger.info("stopping", metadata: ["connections.open": "\(model.snapshot().open)"])
        model.beginStop(deadline: monotonicNanoseconds() + nanoseconds(configuration.stopTimeout))
        _ = controlLoop(signals: signals, model: model, status: &status, stopping: true)
        closeListeners()
        state = .stopped
        let final = model.snapshot()
        logger.info(
            "stopped",
            metadata: ["connections.accepted": "\(final.accepted)", "bytes.echoed": "\(final.bytesEchoed)"])
    }

    private func makeModel() throws(StartupError) -> ServingModel {
        let settings = ModelSettings(
            listeners: listeners, maxConnections: maxConnections, workers: workerCount,
            threadStackSize: configuration.threadStackSize, heartbeatMilliseconds: heartbeatMilliseconds)
        do {
            let model: ServingModel
            switch configuration.model {
            case .event:
                model = try EventModel(settings: settings, logger: logger)
            case .thread:
                model = try ThreadModel(settings: settings, logger: logger)
            case .fork:
                model = try ForkModel(settings: settings, logger: logger)
            }
            try model.start()
            return model
        } catch {
            throw StartupError("cannot start the \(configuration.model.rawValue) model: \(error)", errno: error.errno)
        }
    }

    private func makeSignalFD() throws(StartupError) -> SignalFD {
        do {
            return try SignalFD(daemonSignals + (configuration.watchdogTestTrigger ? [SIGUSR1] : []))
        } catch {
            let message = "cannot create signalfd: \(error)"
            notifier.notify("STATUS=Failed to start: \(message)\nERRNO=\(error.errno)")
            throw StartupError(message, errno: error.errno)
        }
    }

    // MARK: - Control loop

    /// The control thread's loop: signals, the model's descriptors (the thread and fork models
    /// accept here), periodic STATUS=, the model's ticks.
    ///
    /// - Returns: when not `stopping`, the signal that asked for a stop; when `stopping`, 0 once
    ///   the model has finished its stop.
    private func controlLoop(
        signals: borrowing SignalFD, model: ServingModel, status: inout StatusReporter, stopping: Bool
    ) -> Int32 {
        let statusInterval = nanoseconds(self.statusInterval)
        var nextStatus = monotonicNanoseconds() + statusInterval
        var watchdog = Watchdog(interval: watchdogInterval, start: monotonicNanoseconds())
        var timeoutLog = ConnectionTimeouts.LogState()
        var pollSet: [pollfd] = []
        while true {
            if stopping && model.isStopped { return 0 }
            var now = monotonicNanoseconds()
            if now >= nextStatus {
                notifier.notify("STATUS=\(stopping ? "Stopping: " : "")\(status.line(model.snapshot()))")
                timeoutLog.logIfChanged(logger)
                nextStatus = now + statusInterval
            }
            if let due = watchdog.nextCheck, now >= due {
                switch watchdog.check(model.progress(), now: now) {
                case .ping: notifier.notify("WATCHDOG=1")
                case .stalled(let workers):
                    logger.error(
                        "worker not making progress; withholding watchdog ping",
                        metadata: ["worker.index": "\(workers.map(String.init).joined(separator: ","))"])
                case .quiet: break
                }
            }
            var wait = nextStatus - now
            if let due = watchdog.nextCheck { wait = min(wait, max(0, due - now)) }
            if let tick = model.tickInterval { wait = min(wait, tick) }
            pollSet.removeAll(keepingCapacity: true)
            pollSet.append(pollfd(fd: signals.descriptor.rawValue, events: Int16(POLLIN), revents: 0))
            for fd in model.controlDescriptors { pollSet.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&pollSet, nfds_t(pollSet.count), Int32(max(0, wait / 1_000_000) + 1))
            now = monotonicNanoseconds()
            if model.tickInterval != nil { model.tick(now: now) }
            guard ready > 0 else { continue }
            for p in pollSet.dropFirst() where p.revents != 0 {
                model.controlDescriptorReadable(p.fd)
            }
            guard pollSet[0].revents != 0 else { continue }
            while let delivery = try? signals.nextDelivery() {
                let signal = delivery.signal
                switch signal {
                case SIGCHLD:
                    model.handleSignal(signal, from: delivery.pid)
                case SIGHUP where !stopping:
                    reload(model: model, status: &status)
                case SIGUSR1 where configuration.watchdogTestTrigger:
                    logger.warning("SIGUSR1: hanging a worker (WatchdogTestTrigger)")
                    model.hangWorkerForTest()
                case SIGTERM, SIGINT:
                    if !stopping { return signal }
                default:
                    break
                }
            }
        }
    }

    // MARK: - Reload

    private func reload(model: ServingModel, status: inout StatusReporter) {
        // MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) tie this to the request; 252
        // ignores it.
        notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(monotonicNanoseconds() / 1000)\nSTATUS=Reloading configuration")
        logger.info("reloading configuration", metadata: ["config.path": "\(source.path)"])
        let new: Configuration
        do {
            new = try source.loadReportingDiagnostics()
        } catch {
            logger.error("reload failed; keeping the running configuration")
            notifier.notify("READY=1\nSTATUS=Reload failed, running on previous configuration: \(error.diagnostics.first.map { "\($0)" } ?? "")")
            return
        }
        let old = configuration
        var needsRestart: [String] = []
        if new.model != old.model { needsRestart.append("Model=") }
        if new.workers != old.workers { needsRestart.append("Workers=") }
        if new.threadStackSize != old.threadStackSize { needsRestart.append("[Thread] StackSize=") }
        if passed.isEmpty && new.listen != old.listen { needsRestart.append("Listen=") }
        if passed.isEmpty && new.backlog != old.backlog { needsRestart.append("Backlog=") }
        if !needsRestart.isEmpty {
            logger.warning(
                "changed settings take effect only after a restart",
                metadata: ["keys": "\(needsRestart.joined(separator: " "))"])
        }
        var applied = new
        // Keep what needs a restart as it is running, so a later reload compares against reality.
        applied.model = old.model
        applied.workers = old.workers
        applied.listen = old.listen
        applied.backlog = old.backlog
        applied.threadStackSize = old.threadStackSize
        do {
            if new.noFile != old.noFile || new.nProc != old.nProc || new.core != old.core
                || new.stackSize != old.stackSize
            {
                try applyResourceLimits(new)
            }
        } catch {
            logger.error("reload: cannot apply [Limits]; keeping the previous limits", metadata: ["error": "\(error)"])
            applied.noFile = old.noFile
            applied.nProc = old.nProc
            applied.core = old.core
            applied.stackSize = old.stackSize
        }
        logLevel.level = new.logLevel
        ConnectionTimeouts.shared.update(from: new)
        let limit = effectiveMaxConnections(applied)
        if limit != maxConnections {
            maxConnections = limit
            model.setMaxConnections(limit)
        }
        configuration = applied
        logger.info("configuration reloaded", metadata: ["max_connections": "\(maxConnections)"])
        notifier.notify("READY=1\nSTATUS=\(status.line(model.snapshot()))")
    }

    // MARK: - Start-up steps

    /// Applies `[Limits]` (NoFile=, NProc=, Core=, StackSize=) to the soft limits and logs, once,
    /// what is in force.
    private func applyResourceLimits(_ config: Configuration) throws(StartupError) {
        // (key, log label, resource, value, the unit file's setting for the hard limit)
        let wanted: [(String, String, Int32, ResourceLimitValue?, String)] = [
            ("NoFile", "limit.nofile", ResourceLimits.noFile, config.noFile, "LimitNOFILE="),
            ("NProc", "limit.nproc", ResourceLimits.nProc, config.nProc, "LimitNPROC="),
            ("Core", "limit.core", ResourceLimits.core, config.core, "LimitCORE="),
            ("StackSize", "limit.stack", ResourceLimits.stack, config.stackSize, "LimitSTACK="),
        ]
        var metadata: Logger.Metadata = [:]
        for (key, label, resource, value, unitSetting) in wanted {
            let applied = try applyLimit(
                key: key, resource: resource, value: value, unitSetting: unitSetting,
                origin: config.origins["Limits.\(key)"])
            metadata[label] = "\(ResourceLimit.format(applied.soft))"
            metadata[label + ".hard"] = "\(ResourceLimit.format(applied.hard))"
        }
        logger.info("resource limits applied", metadata: metadata)
    }

    /// Sets one soft limit (`max`: up to the hard limit; nil: leave it).
    /// - Returns: the limit now in force.
    private func applyLimit(
        key: String, resource: Int32, value: ResourceLimitValue?, unitSetting: String, origin: SourceLocation?
    )
        throws(StartupError) -> ResourceLimit
    {
        let current: ResourceLimit
        do {
            current = try ResourceLimits.get(resource)
        } catch {
            throw StartupError("cannot read the \(key)= limit: \(error)", errno: error.errno)
        }
        var wanted = current
        switch value {
        case nil: return current
        case .max: wanted.soft = current.hard
        case .value(let v):
            guard v <= current.hard else {
                let at = origin.map { "\($0): " } ?? ""
                throw StartupError(
                    "\(at)\(key)=\(v) is above the hard limit (\(ResourceLimit.format(current.hard))); "
                        + "raise \(unitSetting) in the unit or use \(key)=max",
                    errno: EPERM, exitStatus: ExitStatus.config)
            }
            wanted.soft = v
        }
        guard wanted != current else { return current }
        do {
            try ResourceLimits.set(resource, wanted)
        } catch {
            throw StartupError("cannot set the \(key)= limit to \(wanted): \(error)", errno: error.errno)
        }
        return wanted
    }

    /// Descriptors kept back from `MaxConnections=auto` for listeners, logs, the signalfd and
    /// the like, besides the two (epoll, eventfd) of each event-model worker.
    static let descriptorReserve = 64

    /// `MaxConnections=` resolved (`auto`: the open-file soft limit less a reserve), combined with
    /// the model's own limit (`MaxThreads=`, `MaxChildren=`).
    private func effectiveMaxConnections(_ config: Configuration) -> Int {
        var limit: Int
        switch config.maxConnections {
        case .limit(let n):
            limit = n
        case .auto:
            let soft = (try? ResourceLimits.get(ResourceLimits.noFile).soft) ?? 1024
            let usable = min(soft, UInt64(Int32.max))
            let reserve = Self.descriptorReserve + (config.model == .event ? 2 * workerCount : 0)
            limit = max(1, Int(usable) - reserve)
        }
        switch config.model {
        case .event: break
        case .thread: limit = min(limit, config.maxThreads)
        case .fork: limit = min(limit, config.maxChildren)
        }
        return limit
    }

    /// Closes our copies of the listeners (systemd keeps its own for the next activation).
    private func closeListeners() {
        for fd in listeners { closeNoRetry(fd) }
        listeners.removeAll()
    }

    private func openListeners() throws(StartupError) {
        if !passed.isEmpty {
            for p in passed {
                let kind = Socket.kind(of: p.fd)
                guard kind == .listeningStream else {
                    throw StartupError(
                        "passed descriptor \(p.fd) (\(p.name)) is \(kind), not a listening stream socket; "
                            + "check ListenStream= in the socket unit",
                        errno: EINVAL)
                }
                do {
                    try Socket.makeNonBlockingCloseOnExec(p.fd)
                    try Socket.setOption(p.fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)")
                } catch {
                    throw StartupError("cannot prepare passed descriptor \(p.fd) (\(p.name)): \(error)", errno: error.errno)
                }
                let address = (try? Socket.localAddress(p.fd)).flatMap { $0 }.map { "\($0)" } ?? "unknown"
                logger.info(
                    "listening",
                    metadata: ["listen.address": "\(address)", "listen.source": "systemd", "listen.name": "\(p.name)"])
                listeners.append(p.fd)
            }
            if !configuration.listen.isEmpty, configuration.origins["Server.Listen"] != nil {
                logger.debug("Listen= ignored: sockets were passed by the service manager")
            }
            return
        }
        if configuration.listen.isEmpty {
            let at = configuration.origins["Server.Listen"].map { "\($0): " } ?? ""
            throw StartupError(
                "\(at)no Listen= address is configured and the service manager passed no sockets",
                errno: EINVAL, exitStatus: ExitStatus.config)
        }
        for address in configuration.listen {
            do {
                let fd = try Socket.listen(on: address, backlog: configuration.backlog)
                // Accepted sockets inherit TCP_NODELAY from the listener: echoes go out at once
                // without a setsockopt per connection.
                try Socket.setOption(fd.rawValue, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)")
                let bound = (try? Socket.localAddress(fd.rawValue)).flatMap { $0 } ?? address
                logger.info("listening", metadata: ["listen.address": "\(bound)", "listen.source": "config"])
                listeners.append(fd.release())
            } catch {
                let origin = configuration.origins["Server.Listen"].map { " (\($0))" } ?? ""
                throw StartupError("cannot listen on \(address)\(origin): \(error)", errno: error.errno)
            }
        }
    }
}

/// Formats the `STATUS=` line, with the echo rate since the previous line.
struct StatusReporter {
    let summary: String
    private var lastBytes: UInt64 = 0
    private var lastTime = monotonicNanoseconds()

    init(summary: String) {
        self.summary = summary
    }

    mutating func line(_ s: ServerSnapshot) -> String {
        let now = monotonicNanoseconds()
        let seconds = Double(max(1, now - lastTime)) / 1e9
        let rate = Double(s.bytesEchoed &- lastBytes) / seconds
        lastBytes = s.bytesEchoed
        lastTime = now
        return "\(summary): \(s.open) open, \(s.accepted) accepted, "
            + "\(formatBytes(Double(s.bytesEchoed))) echoed, \(formatBytes(rate))/s"
            + ConnectionTimeouts.shared.statusSuffix
    }
}

/// Decides, at half the watchdog interval, whether to send `WATCHDOG=1`: only when every
/// worker's progress counter has moved since the last check.
struct Watchdog {
    enum Verdict: Equatable {
        case ping
        /// Workers (by index) whose counter has not moved: no ping (logged once per stall).
        case stalled([Int])
        /// Stalled, and already reported.
        case quiet
    }

    let interval: Int64?
    private(set) var nextCheck: Int64?
    private var last: [UInt64] = []
    private var reported = false

    init(interval: Int64?, start: Int64) {
        self.interval = interval
        nextCheck = interval.map { start + $0 / 2 }
    }

    mutating func check(_ progress: [UInt64], now: Int64) -> Verdict {
        if let interval { nextCheck = now + interval / 2 }
        defer { last = progress }
        let stuck = progress.indices.filter { $0 < last.count && progress[$0] == last[$0] }
        if stuck.isEmpty {
            reported = false
            return .ping
        }
        if reported { return .quiet }
        reported = true
        return .stalled(stuck)
    }
}

/// `1.5 MiB`-style binary units.
func formatBytes(_ bytes: Double) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = bytes
    var i = 0
    while v >= 1024 && i < units.count - 1 {
        v /= 1024
        i += 1
    }
    if i == 0 { return "\(Int(v)) B" }
    let tenths = Int((v * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) \(units[i])"
}

/// `SIGTERM`-style names for the signals echod handles.
func signalName(_ signal: Int32) -> String {
    switch signal {
    case SIGHUP: return "SIGHUP"
    case SIGTERM: return "SIGTERM"
    case SIGINT: return "SIGINT"
    case SIGCHLD: return "SIGCHLD"
    case SIGUSR1: return "SIGUSR1"
    default: return "signal \(signal)"
    }
}
