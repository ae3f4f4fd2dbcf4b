// SPDX-License-Identifier: Apache-2.0
// The daemon's life: start (rlimits, listeners, the serving model), READY=1, periodic STATUS=,
// reload on SIGHUP, graceful stop on SIGTERM/SIGINT. Signals arrive through a signalfd read by
// the control thread (the thread that called `run`), never through asynchronous handlers.
//
// What the lifecycle uses lives in rooms of its own: ListenerSet (Listeners.swift),
// ConfiguredLimits, ReloadPlan (Reload.swift), StatusReporter (Status.swift), MetricsPublisher
// (MetricsFile.swift), Watchdog, WatchdogTestTrigger, StartupError/ExitStatus; the models behind
// `ServingModel`.
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

    private var configuration: Configuration
    private let source: ConfigurationSource
    private let notifier: ServiceNotifier
    private var logger: Logger
    private let logLevel: LogLevelSetting
    private let passed: [PassedDescriptor]
    private var state: State = .starting {
        didSet { logger.debug("state changed", metadata: ["state": "\(state)"]) }
    }
    private var maxConnections = 0
    /// The UDP echo's policy and per-source table, when there are UDP sockets.
    private var datagramPolicy: DatagramPolicy?
    /// Per-source state of the whole service (`SourceTable`), mapped before the model is built
    /// so that every thread, fork child and worker process shares it.
    private var sources: SourceTable?
    /// The STATUS= figures as a Prometheus text file in `$RUNTIME_DIRECTORY` (see `MetricsFile`).
    private var metrics = MetricsPublisher(file: nil, model: "")
    /// Where the metrics file goes: `$RUNTIME_DIRECTORY/echod.prom`, when systemd set it.
    private let metricsFile: MetricsFile?

    /// Descriptors kept back from `MaxConnections=auto` for listeners, logs, the signalfd and
    /// the like (the model adds its own, see `ServingModel.descriptorReserve`).
    static let descriptorReserve = 64

    /// While stopping, how often the control loop looks whether the model has finished (ns).
    static let stopCheckInterval: Int64 = 20_000_000

    /// How often `STATUS=` is refreshed.
    public var statusInterval: Duration = .seconds(2)

    /// systemd's `WatchdogSec=` in nanoseconds, if set: pings go out at half of it, and only
    /// while every worker is making progress.
    private var watchdogInterval: Int64? {
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
        let model: ServingModel
        do throws(StartupError) {
            try ConfiguredLimits.apply(configuration, logger: logger)
            listeners = try ListenerSet.open(passed: passed, configuration: configuration, logger: logger)
            maxConnections = connectionLimit(configuration)
            ConnectionTimeouts.shared.update(from: configuration)
            DatagramShared.shared.update(from: configuration)
            sources = try makeSourceTable()
            model = try makeModel(listeners: listeners)
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
        let final = model.snapshot()
        state = .stopped(final)
        metrics.remove()
        logger.info(
            "stopped",
            metadata: ["connections.accepted": "\(final.accepted)", "bytes.echoed": "\(final.bytesEchoed)"])
    }

    /// The `STATUS=` line for the model's figures now; the metrics file gets the same figures.
    private func publishStatus(_ status: inout StatusReporter, _ model: ServingModel) -> String {
        let snapshot = model.snapshot()
        let refusals = sources?.refusals ?? .init()
        metrics.publish(snapshot, refusals: refusals, logger: logger)
        return status.line(snapshot, refusals: refusals)
    }

    /// `MaxConnections=` resolved for the configured model.
    private func connectionLimit(_ config: Configuration) -> Int {
        let soft = (try? ResourceLimits.get(ResourceLimits.noFile).soft) ?? 1024
        return config.model.servingModel.connectionLimit(config, openFileLimit: soft, daemonReserve: Self.descriptorReserve)
    }

    private func makeModel(listeners: ListenerSet) throws(StartupError) -> ServingModel {
        let datagramSockets = listeners.datagramDescriptors
        let policy = datagramSockets.isEmpty ? nil : try makeDatagramPolicy(ownPorts: listeners.localPorts)
        datagramPolicy = policy
        DatagramShared.shared.isServing = policy != nil
        let context = ModelContext(
            listeners: listeners.descriptors, datagramSockets: datagramSockets, datagramPolicy: policy,
            maxConnections: maxConnections,
            heartbeatMilliseconds: Watchdog.heartbeatMilliseconds(interval: watchdogInterval), logger: logger,
            sources: sources)
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
            let table = try SourceTable(capacity: SourceTable.capacity(forMaxConnections: maxConnections))
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
                timeoutLog.logIfChanged(logger)
                if let sources { refusalLog.logIfChanged(sources, logger) }
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
                    beginStop(model, signal: signal)
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

    // MARK: - Reload

    /// Reads the configuration again and applies what can change while running; the rest waits
    /// for a restart (see `ReloadPlan`).
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
        DatagramShared.shared.update(from: new)
        sources?.apply(SourceTable.Limits(new))
        datagramPolicy?.sources?.apply(SourceTable.Limits(prefixIPv6: new.sourcePrefixIPv6))
        let limit = connectionLimit(plan.applied)
        if limit != maxConnections {
            maxConnections = limit
            model.setMaxConnections(limit)
        }
        configuration = plan.applied
        logger.info("configuration reloaded", metadata: ["max_connections": "\(maxConnections)"])
        notifier.notify("READY=1\nSTATUS=\(publishStatus(&status, model))")
    }
}
