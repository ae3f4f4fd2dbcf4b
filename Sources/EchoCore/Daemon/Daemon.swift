// SPDX-License-Identifier: Apache-2.0
// The daemon's life: start (rlimits, listeners, the serving model), READY=1, periodic STATUS=,
// reload on SIGHUP, graceful stop on SIGTERM/SIGINT. Signals arrive through a signalfd read by
// the control thread (the thread that called `run`), never through asynchronous handlers.
//
// What the lifecycle uses lives in rooms of its own: ListenerSet (Listeners.swift),
// ConfiguredLimits, ReloadPlan (Reload.swift), StatusReporter (Status.swift), MetricsPublisher
// (MetricsFile.swift), Watchdog, WatchdogTestTrigger, StartupError/ExitStatus; the models behind
// `ServingModel`. With `Processes=` above 1, `Supervisor` takes over after the listeners are
// open: it forks the workers, each of which runs `serve` here as a `Role.worker`.
import Glibc
import Logging

/// Signals the control thread handles; block them (`Signals.block`) before any thread starts.
public let daemonSignals: [Int32] = [SIGHUP, SIGTERM, SIGINT, SIGCHLD]

/// The echo daemon: owns the listeners and the serving model, and answers signals.
public final class Daemon {
    /// The daemon's lifecycle; each case carries what exists in that state, and the control
    /// loop reads it to know what to do.
    enum State {
        /// Before `run` has started the model.
        case starting
        /// Serving connections.
        case serving(ServingModel)
        /// A stop signal arrived: the model finishes open connections (by the deadline it was
        /// given in `beginStop(deadline:)`, which it enforces itself).
        case stopping(ServingModel)
        /// Every connection is closed; the final totals.
        case stopped(ServerSnapshot)

        /// The running model, while there is one.
        var model: ServingModel? {
            switch self {
            case .serving(let m), .stopping(let m): return m
            case .starting, .stopped: return nil
            }
        }

        var isStopping: Bool {
            if case .stopping = self { return true }
            return false
        }
    }

    /// What this process is: the only one, or a worker of a supervisor (`Processes=`).
    enum Role {
        /// echod is one process (`Processes=1`): it serves, and talks to systemd.
        case standalone
        /// A worker process: it serves, and reports to the supervisor through its slot.
        case worker(WorkerChannel)
    }

    var role: Role = .standalone

    /// Whether this is a worker process of a supervisor.
    var isWorker: Bool {
        if case .worker = role { return true }
        return false
    }
    var configuration: Configuration
    let source: ConfigurationSource
    var notifier: ServiceNotifier
    var logger: Logger
    let logLevel: LogLevelSetting
    let passed: [PassedDescriptor]
    private var state: State = .starting {
        didSet { logger.debug("state changed", metadata: ["state": "\(state)"]) }
    }
    var maxConnections = 0
    /// The UDP echo's policy and per-source table, when there are UDP sockets (made before any
    /// worker process is forked, so that the table is the service's).
    private var datagramPolicy: DatagramPolicy?
    /// Per-source state of the whole service (`SourceTable`), mapped before the model is built
    /// (and before a supervisor forks its workers) so that every thread, fork child and worker
    /// process shares it.
    var sources: SourceTable?
    /// The STATUS= figures as a Prometheus text file in `$RUNTIME_DIRECTORY` (see `MetricsFile`).
    private var metrics = MetricsPublisher(file: nil, model: "")
    /// Where the metrics file goes: `$RUNTIME_DIRECTORY/echod.prom`, when systemd set it (never
    /// in a worker process: the supervisor writes the sums).
    var metricsFile: MetricsFile?
    /// At a restart: the channel the model sends its connections on (Restart.swift), and when
    /// SIGTERM arrived (for the log).
    private var handover: (channel: HandoverChannel, started: Int64)?
    /// Connections handed over by the previous echod, until a model takes them (with
    /// `Processes=` above 1: worker process 0; the others and the supervisor close their copies).
    var inherited: [InheritedConnection] = []

    /// Descriptors kept back from `MaxConnections=auto` for listeners, logs, the signalfd and
    /// the like (the model adds its own, see `ServingModel.descriptorReserve`).
    static let descriptorReserve = 64

    /// While stopping, how often the control loop looks whether the model has finished (ns).
    static let stopCheckInterval: Int64 = 20_000_000

    /// How often `STATUS=` is refreshed.
    public var statusInterval: Duration = .seconds(2)

    /// systemd's `WatchdogSec=` in nanoseconds, if set: pings go out at half of it, and only
    /// while every worker is making progress.
    var watchdogInterval: Int64? {
        notifier.watchdogInterval.map { nanoseconds($0) }
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
        metricsFile = MetricsFile.inRuntimeDirectory(
            environment: getenv("RUNTIME_DIRECTORY").map { ["RUNTIME_DIRECTORY": String(cString: $0)] } ?? [:])
    }

    /// Runs until SIGTERM or SIGINT and a graceful stop.
    ///
    /// The caller must have blocked `daemonSignals` in this thread before starting any thread.
    /// - Throws: `StartupError` if the daemon cannot start; it has then told the service
    ///   manager why (`STATUS=` and `ERRNO=`).
    public func run() throws(StartupError) {
        let testSignals = WatchdogTestTrigger.arm(configuration, logger: logger)
        let signals = try makeSignalFD(daemonSignals + testSignals)
        let listeners: ListenerSet
        let processes = configuration.processCount
        do throws(StartupError) {
            try ConfiguredLimits.apply(configuration, logger: logger)
            // After [Limits]: the connections taken over need their descriptors.
            let intake = RestartIntake.take(passed, notifier: notifier, logger: logger)
            listeners = try ListenerSet.open(passed: intake.listeners, configuration: configuration, logger: logger)
            maxConnections = connectionLimit(configuration)
            // Also maps the timeout counters' shared page, before any worker is forked.
            ConnectionTimeouts.shared.update(from: configuration)
            // The UDP counters and output cap: a shared page too.
            DatagramShared.shared.update(from: configuration)
            sources = try makeSourceTable()
            if !listeners.datagramDescriptors.isEmpty {
                datagramPolicy = try makeDatagramPolicy(ownPorts: listeners.localPorts)
            }
            inherited = intake.inherited
        } catch {
            notifier.notify(error.notification)
            throw error
        }
        // Everything every process must share (MAP_SHARED mappings such as the timeout counters
        // above) is created before this point: with Processes= above 1 the workers are forked
        // next, and what `serve` creates is each worker's own.
        if processes > 1 {
            // Still the only thread: the supervisor forks the workers and never starts a thread.
            let supervisor: Supervisor
            do throws(StartupError) {
                supervisor = try Supervisor(daemon: self, processes: processes)
            } catch {
                notifier.notify(error.notification)
                throw error
            }
            try supervisor.run(signals: signals, listeners: listeners)
            return
        }
        try serve(signals: signals, listeners: listeners)
    }

    /// Builds and starts the model on `listeners`, says READY=1, and runs the control loop until
    /// the model has stopped: the whole life of a single-process echod, and of a worker process.
    /// - Throws: `StartupError` if the model cannot start (already told to the notifier).
    func serve(signals: borrowing SignalFD, listeners: ListenerSet) throws(StartupError) {
        let model: ServingModel
        do throws(StartupError) {
            let adopted = inherited
            inherited = []
            model = try makeModel(listeners: listeners, inherited: adopted)
        } catch {
            notifier.notify(error.notification)
            throw error
        }
        state = .serving(model)
        let serving: Logger.Metadata = [
            "model": "\(configuration.model.rawValue)", "max_connections": "\(maxConnections)",
            "listeners": "\(listeners.descriptors.count)", "udp_sockets": "\(listeners.datagramDescriptors.count)",
        ]
        logger.info("serving", metadata: serving.merging(model.servingMetadata) { a, _ in a })
        var status = StatusReporter(summary: model.summary)
        metrics = MetricsPublisher(
            file: metricsFile, model: configuration.model.rawValue)
        notifier.notify("READY=1\nSTATUS=\(publishStatus(&status, model))")

        controlLoop(signals: signals, status: &status)
        listeners.close()
        if let handover { finishHandover(handover.channel, started: handover.started, model: model) }
        let final = model.snapshot()
        if case .worker(let channel) = role { channel.table.publish(channel.slot, final) }
        state = .stopped(final)
        metrics.remove()
        logger.info(
            "stopped",
            metadata: ["connections.accepted": "\(final.accepted)", "bytes.echoed": "\(final.bytesEchoed)"])
    }

    /// The `STATUS=` line for the model's figures now; the metrics file gets the same figures.
    private func publishStatus(_ status: inout StatusReporter, _ model: ServingModel) -> String {
        let snapshot = model.snapshot()
        if case .worker(let channel) = role { channel.table.publish(channel.slot, snapshot) }
        let refusals = sources?.refusals ?? .init()
        metrics.publish(snapshot, refusals: refusals, logger: logger)
        return status.line(snapshot, refusals: refusals)
    }

    /// `MaxConnections=` resolved for the configured model.
    func connectionLimit(_ config: Configuration) -> Int {
        let soft = (try? ResourceLimits.get(ResourceLimits.noFile).soft) ?? 1024
        return config.model.servingModel.connectionLimit(config, openFileLimit: soft, daemonReserve: Self.descriptorReserve)
    }

    private func makeModel(listeners: ListenerSet, inherited: [InheritedConnection]) throws(StartupError) -> ServingModel {
        let datagramSockets = listeners.datagramDescriptors
        let policy = datagramSockets.isEmpty ? nil : datagramPolicy
        DatagramShared.shared.isServing = policy != nil
        let context = ModelContext(
            listeners: listeners.descriptors, datagramSockets: datagramSockets, datagramPolicy: policy,
            maxConnections: maxConnections,
            heartbeatMilliseconds: Watchdog.heartbeatMilliseconds(interval: watchdogInterval),
            rotateListeners: isWorker, logger: logger, sources: sources, inherited: inherited)
        do {
            let model = try configuration.model.servingModel.init(configuration: configuration, context: context)
            try model.start()
            return model
        } catch {
            throw StartupError("cannot start the \(configuration.model.rawValue) model: \(error)", errno: error.errno)
        }
    }

    /// The per-source table, sized from the connection limit at start, with the configured limits.
    private func makeSourceTable() throws(StartupError) -> SourceTable {
        do {
            // One table for the service: every worker process's connections count in it.
            let table = try SourceTable(
                capacity: SourceTable.capacity(forMaxConnections: maxConnections * max(1, configuration.processCount)))
            table.apply(SourceTable.Limits(configuration))
            return table
        } catch {
            throw StartupError("cannot map the per-source table: \(error)", errno: error.errno)
        }
    }

    /// The UDP echo's policy, with its own per-source table (rates only).
    private func makeDatagramPolicy(ownPorts: [UInt16]) throws(StartupError) -> DatagramPolicy {
        do {
            let table = try SourceTable(capacity: DatagramPolicy.sourceTableCapacity)
            table.apply(SourceTable.Limits(prefixIPv6: configuration.sourcePrefixIPv6))
            return DatagramPolicy(ownPorts: ownPorts, sources: table)
        } catch {
            throw StartupError("cannot map the UDP per-source table: \(error)", errno: error.errno)
        }
    }

    private func makeSignalFD(_ signals: [Int32]) throws(StartupError) -> SignalFD {
        do {
            return try SignalFD(signals)
        } catch {
            let failure = StartupError("cannot create signalfd: \(error)", errno: error.errno)
            notifier.notify(failure.notification)
            throw failure
        }
    }

    // MARK: - Control loop

    /// The control thread's loop, from `.serving` until the model has finished its stop:
    /// signals, the model's descriptors (the thread and fork models accept here), periodic
    /// STATUS=, the watchdog, the model's ticks.
    private func controlLoop(signals: borrowing SignalFD, status: inout StatusReporter) {
        let statusInterval = nanoseconds(self.statusInterval)
        var nextStatus = monotonicNanoseconds() + statusInterval
        var watchdog = Watchdog(interval: watchdogInterval, start: monotonicNanoseconds())
        var timeoutLog = ConnectionTimeouts.LogState()
        var refusalLog = SourceTable.LogState()
        var pollSet: [pollfd] = []
        guard let model = state.model else { return }
        // The thread and fork models accept here; the event model asks nothing of this loop.
        let controlled = model as? ControlLoopModel
        while true {
            let stopping = state.isStopping
            if stopping && model.isStopped { return }
            var now = monotonicNanoseconds()
            if now >= nextStatus {
                notifier.notify("STATUS=\(stopping ? "Stopping: " : "")\(publishStatus(&status, model))")
                // A worker's timeouts and refusals are counted in shared memory and logged by the supervisor.
                if case .standalone = role {
                    timeoutLog.logIfChanged(logger)
                    if let sources { refusalLog.logIfChanged(sources, logger) }
                }
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
            if let tick = controlled?.tickInterval { wait = min(wait, tick) }
            if stopping { wait = min(wait, Self.stopCheckInterval) }
            pollSet.removeAll(keepingCapacity: true)
            pollSet.append(pollfd(fd: signals.descriptor.rawValue, events: Int16(POLLIN), revents: 0))
            for fd in controlled?.controlDescriptors ?? [] {
                pollSet.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
            }
            let ready = poll(&pollSet, nfds_t(pollSet.count), Int32(max(0, wait / 1_000_000) + 1))
            now = monotonicNanoseconds()
            if let controlled, controlled.tickInterval != nil { controlled.tick(now: now) }
            guard ready > 0 else { continue }
            for p in pollSet.dropFirst() where p.revents != 0 {
                controlled?.controlDescriptorReadable(p.fd)
            }
            guard pollSet[0].revents != 0 else { continue }
            while let delivery = try? signals.nextDelivery() {
                let signal = delivery.signal
                switch signal {
                case SIGCHLD:
                    controlled?.childExited(delivery.pid)
                case SIGHUP where !stopping:
                    reload(model: model, status: &status)
                case WatchdogTestTrigger.signal where configuration.watchdogTestTrigger:
                    WatchdogTestTrigger.fire(model, logger: logger)
                case SIGTERM where !stopping, SIGINT where !stopping:
                    if signal != SIGTERM || !beginHandover(model) { beginStop(model, signal: signal) }
                    // The stop has its own STATUS= cadence and watchdog period from here.
                    nextStatus = monotonicNanoseconds() + statusInterval
                    watchdog = Watchdog(interval: watchdogInterval, start: monotonicNanoseconds())
                default:
                    break
                }
                // Signals queued behind a stop request are read in the stop's own turns.
                if state.isStopping != stopping { break }
            }
        }
    }

    /// `.serving` to `.stopping`: tells the service manager and the model.
    private func beginStop(_ model: ServingModel, signal: Int32) {
        logger.info("stop requested", metadata: ["signal": "\(signalName(signal))"])
        notifier.notify("STOPPING=1\nSTATUS=Stopping: finishing open connections")
        logger.info("stopping", metadata: ["connections.open": "\(model.snapshot().open)"])
        let deadline = monotonicNanoseconds() + nanoseconds(configuration.stopTimeout)
        model.beginStop(deadline: deadline)
        state = .stopping(model)
    }

    /// At SIGTERM: asks the service manager whether this is a restart with room in the store
    /// (`DescriptorStore.stopIntent`); if so, `.serving` to `.stopping` with the model sending
    /// its connections on a new hand-over channel.
    /// - Returns: false for a graceful stop (not a restart, no answer, a model that cannot).
    private func beginHandover(_ model: ServingModel) -> Bool {
        let started = monotonicNanoseconds()
        guard let store = notifier as? DescriptorStore else { return false }
        let intent = store.stopIntent()
        guard intent == .restart else {
            if case .stop(let reason) = intent {
                logger.info("stop requested; stopping gracefully", metadata: ["reason": "\(reason)"])
            }
            return false
        }
        let channel: HandoverChannel
        do {
            channel = try HandoverChannel()
        } catch {
            logger.error("restart: cannot make the hand-over channel; stopping gracefully", metadata: ["error": "\(error)"])
            return false
        }
        let deadline = monotonicNanoseconds() + nanoseconds(configuration.stopTimeout)
        guard model.beginHandover(sender: channel.sender.rawValue, deadline: deadline) else {
            logger.info(
                "restart: this model cannot hand its connections over; stopping gracefully",
                metadata: ["model": "\(configuration.model.rawValue)"])
            return false
        }
        logger.info(
            "restart requested; handing connections over to the next echod",
            metadata: ["connections.open": "\(model.snapshot().open)"])
        notifier.notify("STOPPING=1\nSTATUS=Restarting: handing connections over")
        handover = (channel, started)
        state = .stopping(model)
        return true
    }

    /// The model has sent everything: the channel's receiving end goes into the store.
    private func finishHandover(_ channel: HandoverChannel, started: Int64, model: ServingModel) {
        let stored = (notifier as? DescriptorStore)?.store(channel.receiver.rawValue, name: Handover.storeName) ?? false
        let metadata: Logger.Metadata = [
            "connections.handed_over": "\(model.handedOver)",
            "milliseconds": "\((monotonicNanoseconds() - started) / 1_000_000)",
        ]
        if stored {
            logger.info("connections handed over", metadata: metadata)
        } else {
            logger.error("the file descriptor store did not take the hand-over; its connections are lost", metadata: metadata)
        }
    }

    // MARK: - Reload

    /// Reads the configuration again and applies what can change while running; the rest waits
    /// for a restart (see `ReloadPlan`).
    private func reload(model: ServingModel, status: inout StatusReporter) {
        // MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) tie this to the request; 252
        // ignores it.
        notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(monotonicNanoseconds() / 1000)\nSTATUS=Reloading configuration")
        var new: Configuration
        var generation: UInt64 = 0
        if case .worker(let channel) = role {
            // The supervisor has parsed and validated the files once; every worker applies the
            // very text it published (see Supervisor.reload).
            let published = channel.table.configuration()
            generation = published.generation
            do {
                new = try ConfigurationLoader.apply(text: published.text, file: "<supervisor>", to: Configuration()).0
            } catch {
                // Cannot happen for text the supervisor rendered; without the acknowledgement the
                // supervisor replaces this worker, which then starts with the new configuration.
                logger.error("reload: cannot read the supervisor's configuration", metadata: ["error": "\(error)"])
                return
            }
            new.listen = configuration.listen
        } else {
            logger.info("reloading configuration", metadata: ["config.path": "\(source.path)"])
            do {
                new = try source.loadReportingDiagnostics()
            } catch {
                logger.error("reload failed; keeping the running configuration")
                notifier.notify("READY=1\nSTATUS=Reload failed, running on previous configuration: \(error.diagnostics.first.map { "\($0)" } ?? "")")
                return
            }
        }
        var plan = ReloadPlan(running: configuration, loaded: new, socketsPassed: !passed.isEmpty)
        if !plan.restartKeys.isEmpty {
            logger.warning(
                "changed settings take effect only after a restart",
                metadata: ["keys": "\(plan.restartKeys.joined(separator: " "))"])
        }
        if plan.limitsChanged {
            do {
                try ConfiguredLimits.apply(new, logger: logger)
            } catch {
                logger.error("reload: cannot apply [Limits]; keeping the previous limits", metadata: ["error": "\(error)"])
                plan.keepLimits(of: configuration)
            }
        }
        logLevel.level = new.logLevel
        ConnectionTimeouts.shared.update(from: new)
        sources?.apply(SourceTable.Limits(new))
        DatagramShared.shared.update(from: new)
        datagramPolicy?.sources?.apply(SourceTable.Limits(prefixIPv6: new.sourcePrefixIPv6))
        let limit = connectionLimit(plan.applied)
        if limit != maxConnections {
            maxConnections = limit
            model.setMaxConnections(limit)
        }
        configuration = plan.applied
        logger.info("configuration reloaded", metadata: ["max_connections": "\(maxConnections)"])
        if case .worker(let channel) = role { channel.table.store(channel.slot, .generation, generation) }
        notifier.notify("READY=1\nSTATUS=\(publishStatus(&status, model))")
    }
}
