// SPDX-License-Identifier: Apache-2.0
// `Processes=` above 1: the supervising process (systemd's main PID) and its worker processes.
//
// The daemon applies [Limits], opens the listeners and maps the shared pages (the timeout
// counters, the `ProcessTable`, and whatever else must be shared) while it is still the only
// thread; then the supervisor forks the workers. The supervisor never starts a thread, so it can
// fork a replacement at any time without the fork hazards of a multi-threaded parent (a child
// that inherits a lock some other thread held). Each worker is this same program continuing
// after fork(): `Daemon.serve` with `Role.worker`, the selected model on the inherited
// listeners. Workers share each listener: the event model's threads register it with
// EPOLLEXCLUSIVE in their own epoll instances, in every process alike, so a connection wakes
// one idle thread of one process (no thundering herd); a worker that dies leaves the connections
// still in the backlog to the others. (SO_REUSEPORT listeners, one per process, would not
// work with the sockets systemd passes, and a dying worker's queue would be reset with it.)
//
// Only the supervisor talks to systemd: READY=1 once every worker has reported ready; STATUS=
// with the sums of the workers' figures; RELOADING=1 ... READY=1 once every worker runs the
// configuration the supervisor validated; STOPPING=1, SIGTERM to every worker, exit once all
// have drained; WATCHDOG=1 only while every worker's heartbeat advances. A worker that dies is
// logged and replaced after a back-off.
import CEchoShims
import Glibc
import Logging

/// Runs the worker processes of `Processes=` and speaks for them to the service manager.
final class Supervisor {
    /// One worker process, as the supervisor tracks it.
    struct WorkerProcess {
        /// 0 while no process runs in this slot.
        var pid: pid_t = 0
        /// When it was forked (CLOCK_MONOTONIC ns).
        var started: Int64 = 0
        /// The wait before the next replacement.
        var backoff: Int64 = Supervisor.initialBackoff
        /// When to fork a replacement, while waiting for one.
        var restartAt: Int64?
    }

    /// First wait before replacing a worker that died; it doubles with each death up to
    /// `maximumBackoff`, and falls back once a worker has lived `stablePeriod`.
    static let initialBackoff: Int64 = 100_000_000
    static let maximumBackoff: Int64 = 10_000_000_000
    static let stablePeriod: Int64 = 10_000_000_000
    /// How long workers have to apply a reloaded configuration before the ones that did not are
    /// replaced (their replacements start with it).
    static let reloadTimeout: Int64 = 10_000_000_000
    /// After `StopTimeoutSec=`, the workers close what is left themselves; a worker still alive
    /// this much later is killed.
    static let stopGrace: Int64 = 1_000_000_000
    /// How often the loop looks at the workers' acknowledgements and exits while it waits.
    static let pollInterval: Int64 = 20_000_000

    private let daemon: Daemon
    private let table: ProcessTable
    private var workers: [WorkerProcess]
    /// Figures of workers that have ended, so that the sums never go back.
    private var retired = ServerSnapshot()
    private var generation: UInt64 = 0
    /// A reload the workers have not all applied yet, and when to stop waiting for them.
    private var pendingReload: (generation: UInt64, deadline: Int64)?
    /// A SIGHUP that arrived while a reload was pending: reload again once it is done.
    private var reloadAgain = false
    private var stopDeadline: Int64?
    private var killedAtDeadline = false
    private let watchdogInterval: Duration?
    private var logger: Logger { daemon.logger }

    /// - Throws: `StartupError` when `Processes=` is more than the processes echod's user may
    ///   have (exit status 78), or the shared table cannot be mapped.
    init(daemon: Daemon, processes: Int) throws(StartupError) {
        self.daemon = daemon
        if let nproc = try? ResourceLimits.get(ResourceLimits.nProc), nproc.soft != UInt64.max, getuid() != 0,
            UInt64(processes) >= nproc.soft
        {
            let at = daemon.configuration.origins["Server.Processes"].map { "\($0): " } ?? ""
            throw StartupError(
                "\(at)Processes=\(processes) is more than the processes echod's user may run "
                    + "(RLIMIT_NPROC \(nproc.soft)); lower Processes= or raise NProc=",
                errno: EAGAIN, exitStatus: ExitStatus.config)
        }
        do {
            table = try ProcessTable(slots: processes)
        } catch {
            throw StartupError("cannot map the worker processes' shared table: \(error)", errno: error.errno)
        }
        workers = Array(repeating: WorkerProcess(), count: processes)
        watchdogInterval = daemon.notifier.watchdogInterval
    }

    /// "event model, 3 processes, 2 workers each" for STATUS= and logs.
    private var summary: String {
        let config = daemon.configuration
        let each: String
        switch config.model {
        case .event:
            let n = EventModel.workerCount(config)
            each = "\(n) worker\(n == 1 ? "" : "s") each"
        case .thread: each = "\(config.threadStackSize / 1024)K stacks"
        case .fork: each = ""
        }
        return "\(config.model.rawValue) model, \(workers.count) processes" + (each.isEmpty ? "" : ", \(each)")
    }

    // MARK: - Running

    /// Forks the workers, waits until all serve, then supervises them until they have stopped.
    /// - Throws: `StartupError` when a worker cannot be forked or ends before every worker serves
    ///   (the others are stopped first).
    func run(signals: borrowing SignalFD, listeners: ListenerSet) throws(StartupError) {
        for slot in workers.indices {
            do throws(StartupError) {
                try spawn(slot, signals: signals, listeners: listeners)
            } catch {
                abandon()
                daemon.notifier.notify(error.notification)
                throw error
            }
        }
        // Connections taken over at a restart went to worker 0 with the fork; the supervisor's
        // copies close (a replacement worker forked later gets none).
        daemon.inherited = []
        guard try waitUntilServing(signals: signals) else {
            listeners.close()
            logger.info("stopped")
            return
        }
        logger.info(
            "serving",
            metadata: [
                "model": "\(daemon.configuration.model.rawValue)", "processes": "\(workers.count)",
                "max_connections.per_process": "\(daemon.maxConnections)",
                "listeners": "\(listeners.descriptors.count)",
            ])
        var status = StatusReporter(summary: summary)
        var metrics = MetricsPublisher(file: daemon.metricsFile, model: daemon.configuration.model.rawValue)
        let first = totals()
        let refusals = daemon.sources?.refusals ?? .init()
        metrics.publish(first, refusals: refusals, logger: logger)
        daemon.notifier.notify("READY=1\nSTATUS=\(status.line(first, refusals: refusals))")
        if reloadAgain {
            reloadAgain = false
            reload(now: monotonicNanoseconds())
        }

        supervise(signals: signals, listeners: listeners, status: &status, metrics: &metrics)
        listeners.close()
        metrics.remove()
        let final = totals()
        logger.info(
            "stopped",
            metadata: ["connections.accepted": "\(final.accepted)", "bytes.echoed": "\(final.bytesEchoed)"])
    }

    /// Forks the worker of `slot`; the child never returns from here.
    private func spawn(_ slot: Int, signals: borrowing SignalFD, listeners: ListenerSet) throws(StartupError) {
        table.reset(slot, generation: generation)
        let supervisorPID = getpid()
        let channel = WorkerChannel(table: table, slot: slot, supervisorWatchdog: watchdogInterval)
        // Nothing buffered in stdio may be written twice.
        fflush(nil)
        let pid = fork()
        if pid < 0 {
            throw StartupError("cannot fork worker process \(slot): \(SystemError("fork", errno: errno))", errno: errno)
        }
        if pid == 0 {
            // The worker: SIGTERM (a graceful stop) if the supervisor goes away, even before this
            // line ran (then the parent is no longer the supervisor).
            _ = CEchoShims_set_parent_death_signal(SIGTERM)
            if getppid() != supervisorPID { _exit(ExitStatus.failure) }
            daemon.runWorker(channel: channel, signals: signals, listeners: listeners)
        }
        table.store(slot, .pid, UInt64(pid))
        workers[slot].pid = pid
        workers[slot].started = monotonicNanoseconds()
        workers[slot].restartAt = nil
        logger.info("worker process started", metadata: ["process.index": "\(slot)", "process.pid": "\(pid)"])
    }

    /// Start-up: waits until every worker has said READY=1. A worker that ends first fails the
    /// start; SIGTERM stops the workers and ends it.
    /// - Returns: true once all serve, false after a stop request.
    private func waitUntilServing(signals: borrowing SignalFD) throws(StartupError) -> Bool {
        while !workers.indices.allSatisfy({ table.load($0, .ready) == 1 }) {
            var entry = pollfd(fd: signals.descriptor.rawValue, events: Int16(POLLIN), revents: 0)
            _ = poll(&entry, 1, Int32(Self.pollInterval / 1_000_000))
            while let delivery = try? signals.nextDelivery() {
                switch delivery.signal {
                case SIGCHLD:
                    for (slot, status) in reapExited() {
                        let failure = StartupError(
                            "worker process \(slot) ended before serving (\(Self.describe(status)))",
                            errno: nil, exitStatus: Self.exitCode(status) ?? ExitStatus.failure)
                        abandon()
                        daemon.notifier.notify(failure.notification)
                        throw failure
                    }
                case SIGHUP:
                    // The workers start with the files as they were; read them again once all serve.
                    reloadAgain = true
                case SIGTERM, SIGINT:
                    logger.info("stop requested while starting", metadata: ["signal": "\(signalName(delivery.signal))"])
                    abandon()
                    return false
                default:
                    break
                }
            }
        }
        return true
    }

    /// Kills every worker (SIGKILL) and waits for them: a start that failed.
    private func abandon() {
        for slot in workers.indices where workers[slot].pid > 0 {
            kill(workers[slot].pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(workers[slot].pid, &status, 0) < 0 && errno == EINTR {}
            workers[slot].pid = 0
        }
    }

    /// The supervisor's loop, from READY=1 until every worker has ended after a stop.
    private func supervise(
        signals: borrowing SignalFD, listeners: ListenerSet, status: inout StatusReporter, metrics: inout MetricsPublisher
    ) {
        let statusInterval = nanoseconds(daemon.statusInterval)
        var nextStatus = monotonicNanoseconds() + statusInterval
        var watchdog = Watchdog(interval: watchdogInterval.map { nanoseconds($0) }, start: monotonicNanoseconds())
        var timeoutLog = ConnectionTimeouts.LogState()
        // The per-source table is one shared mapping: its refusal counts are the service's.
        var refusalLog = SourceTable.LogState()
        while true {
            var now = monotonicNanoseconds()
            if stopDeadline != nil && workers.allSatisfy({ $0.pid == 0 }) { return }
            if now >= nextStatus {
                let sums = totals()
                let refusals = daemon.sources?.refusals ?? .init()
                metrics.publish(sums, refusals: refusals, logger: logger)
                daemon.notifier.notify(
                    "STATUS=\(stopDeadline != nil ? "Stopping: " : "")\(status.line(sums, refusals: refusals))")
                timeoutLog.logIfChanged(logger)
                if let sources = daemon.sources { refusalLog.logIfChanged(sources, logger) }
                nextStatus = now + statusInterval
            }
            if let due = watchdog.nextCheck, now >= due {
                switch watchdog.check(workers.indices.map { table.load($0, .heartbeat) }, now: now) {
                case .ping: daemon.notifier.notify("WATCHDOG=1")
                case .stalled(let slots):
                    logger.error(
                        "worker process not making progress; withholding watchdog ping",
                        metadata: ["process.index": "\(slots.map(String.init).joined(separator: ","))"])
                case .quiet: break
                }
            }
            if let deadline = stopDeadline, now >= deadline + Self.stopGrace, !killedAtDeadline {
                killedAtDeadline = true
                for w in workers where w.pid > 0 {
                    logger.warning("worker process still running after the stop timeout; killing it", metadata: ["process.pid": "\(w.pid)"])
                    kill(w.pid, SIGKILL)
                }
            }
            if stopDeadline == nil {
                for slot in workers.indices {
                    guard let due = workers[slot].restartAt, now >= due else { continue }
                    do {
                        try spawn(slot, signals: signals, listeners: listeners)
                    } catch {
                        logger.error("cannot replace worker process", metadata: ["process.index": "\(slot)", "error": "\(error)"])
                        scheduleRestart(slot, now: now)
                    }
                }
                checkReload(now: now, status: &status)
            }

            var wait = nextStatus - now
            if let due = watchdog.nextCheck { wait = min(wait, max(0, due - now)) }
            for w in workers { if let due = w.restartAt { wait = min(wait, max(0, due - now)) } }
            if pendingReload != nil || stopDeadline != nil { wait = min(wait, Self.pollInterval) }
            var entry = pollfd(fd: signals.descriptor.rawValue, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32(max(0, wait / 1_000_000) + 1))
            guard ready > 0 else { continue }
            now = monotonicNanoseconds()
            while let delivery = try? signals.nextDelivery() {
                switch delivery.signal {
                case SIGCHLD:
                    for (slot, exit) in reapExited() { workerEnded(slot, exit, now: now) }
                case SIGHUP where stopDeadline == nil:
                    reload(now: now)
                case SIGTERM where stopDeadline == nil, SIGINT where stopDeadline == nil:
                    beginStop(signal: delivery.signal, now: now)
                    nextStatus = now + statusInterval
                case WatchdogTestTrigger.signal where daemon.configuration.watchdogTestTrigger:
                    // The test-only hang is the first worker's.
                    if let first = workers.first(where: { $0.pid > 0 }) { kill(first.pid, WatchdogTestTrigger.signal) }
                default:
                    break
                }
            }
        }
    }

    // MARK: - Figures

    /// The workers' figures summed, with those of workers that have ended.
    private func totals() -> ServerSnapshot {
        var sum = retired
        sum.open = 0
        for slot in workers.indices where workers[slot].pid > 0 {
            let s = table.snapshot(slot)
            sum.open += s.open
            sum.accepted &+= s.accepted
            sum.bytesEchoed &+= s.bytesEchoed
            sum.acceptBackoffs &+= s.acceptBackoffs
        }
        return sum
    }

    // MARK: - Workers that end

    /// Reaps every worker that has ended.
    /// - Returns: their slots and wait statuses.
    private func reapExited() -> [(Int, Int32)] {
        var ended: [(Int, Int32)] = []
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid < 0 && errno == EINTR { continue }
            guard pid > 0 else { break }
            guard let slot = workers.firstIndex(where: { $0.pid == pid }) else { continue }
            let last = table.snapshot(slot)
            retired.accepted &+= last.accepted
            retired.bytesEchoed &+= last.bytesEchoed
            retired.acceptBackoffs &+= last.acceptBackoffs
            workers[slot].pid = 0
            ended.append((slot, status))
        }
        return ended
    }

    /// Logs a worker's end and, unless stopping, schedules its replacement.
    private func workerEnded(_ slot: Int, _ status: Int32, now: Int64) {
        let metadata: Logger.Metadata = [
            "process.index": "\(slot)", "process.exit": "\(Self.describe(status))",
        ]
        if stopDeadline != nil {
            if Self.exitCode(status) == 0 {
                logger.debug("worker process finished", metadata: metadata)
            } else {
                logger.warning("worker process ended during the stop", metadata: metadata)
            }
            return
        }
        let lived = now - workers[slot].started
        if lived >= Self.stablePeriod { workers[slot].backoff = Self.initialBackoff }
        logger.error(
            "worker process ended; replacing it",
            metadata: metadata.merging(["restart.delay_ms": "\(workers[slot].backoff / 1_000_000)"]) { a, _ in a })
        scheduleRestart(slot, now: now)
    }

    private func scheduleRestart(_ slot: Int, now: Int64) {
        workers[slot].restartAt = now + workers[slot].backoff
        workers[slot].backoff = min(Self.maximumBackoff, workers[slot].backoff * 2)
    }

    /// "exit status 1", "signal 9 (SIGKILL)".
    static func describe(_ status: Int32) -> String {
        if status & 0x7f == 0 { return "exit status \((status >> 8) & 0xff)" }
        let signal = status & 0x7f
        let name = signal == SIGKILL ? " (SIGKILL)" : signal == SIGSEGV ? " (SIGSEGV)" : signal == SIGABRT ? " (SIGABRT)" : ""
        return "signal \(signal)\(name)"
    }

    /// The exit status when the process exited, nil when a signal ended it.
    static func exitCode(_ status: Int32) -> Int32? {
        status & 0x7f == 0 ? (status >> 8) & 0xff : nil
    }

    // MARK: - Reload

    /// SIGHUP: parse and validate the files once, apply what the supervisor itself keeps (its
    /// limits, which replacements inherit, and the configuration they start with), publish the
    /// text every worker applies, and tell them. READY=1 follows once all have applied it
    /// (`checkReload`). Nothing reaches the workers when the files are invalid.
    private func reload(now: Int64) {
        if pendingReload != nil {
            reloadAgain = true
            return
        }
        daemon.notifier.notify(
            "RELOADING=1\nMONOTONIC_USEC=\(now / 1000)\nSTATUS=Reloading configuration")
        logger.info("reloading configuration", metadata: ["config.path": "\(daemon.source.path)"])
        let new: Configuration
        do {
            new = try daemon.source.loadReportingDiagnostics()
        } catch {
            logger.error("reload failed; keeping the running configuration")
            daemon.notifier.notify(
                "READY=1\nSTATUS=Reload failed, running on previous configuration: \(error.diagnostics.first.map { "\($0)" } ?? "")")
            return
        }
        let running = daemon.configuration
        var plan = ReloadPlan(running: running, loaded: new, socketsPassed: !daemon.passed.isEmpty)
        // What the workers read: everything but Listen=, which only the supervisor uses.
        var published = plan.applied
        published.listen = []
        guard published.rendered().utf8.count <= ProcessTable.textCapacity else {
            logger.error("reload failed: the configuration is too large to hand to the worker processes")
            daemon.notifier.notify("READY=1\nSTATUS=Reload failed, running on previous configuration: too large")
            return
        }
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
                plan.keepLimits(of: running)
                published = plan.applied
                published.listen = []
            }
        }
        daemon.logLevel.level = plan.applied.logLevel
        ConnectionTimeouts.shared.update(from: plan.applied)
        daemon.configuration = plan.applied
        daemon.maxConnections = daemon.connectionLimit(plan.applied)
        generation += 1
        _ = table.publishConfiguration(published.rendered(), generation: generation)
        for w in workers where w.pid > 0 { kill(w.pid, SIGHUP) }
        pendingReload = (generation, now + Self.reloadTimeout)
    }

    /// READY=1 once every running worker has applied the pending reload; a worker that has not
    /// by the deadline is killed, and its replacement starts with the new configuration.
    private func checkReload(now: Int64, status: inout StatusReporter) {
        guard let pending = pendingReload else { return }
        let behind = workers.indices.filter { workers[$0].pid > 0 && table.load($0, .generation) != pending.generation }
        if behind.isEmpty {
            pendingReload = nil
            logger.info(
                "configuration reloaded",
                metadata: ["processes": "\(workers.count)", "max_connections.per_process": "\(daemon.maxConnections)"])
            daemon.notifier.notify("READY=1\nSTATUS=\(status.line(totals()))")
            if reloadAgain {
                reloadAgain = false
                reload(now: now)
            }
        } else if now >= pending.deadline {
            for slot in behind {
                logger.error(
                    "worker process did not apply the reloaded configuration in time; replacing it",
                    metadata: ["process.index": "\(slot)", "process.pid": "\(workers[slot].pid)"])
                kill(workers[slot].pid, SIGKILL)
            }
            pendingReload = (pending.generation, now + Self.reloadTimeout)
        }
    }

    // MARK: - Stop

    /// SIGTERM/SIGINT: STOPPING=1 and SIGTERM to every worker; each drains as a single echod does.
    private func beginStop(signal: Int32, now: Int64) {
        logger.info("stop requested", metadata: ["signal": "\(signalName(signal))"])
        daemon.notifier.notify("STOPPING=1\nSTATUS=Stopping: finishing open connections")
        logger.info("stopping", metadata: ["connections.open": "\(totals().open)"])
        stopDeadline = now + nanoseconds(daemon.configuration.stopTimeout)
        pendingReload = nil
        for slot in workers.indices {
            workers[slot].restartAt = nil
            if workers[slot].pid > 0 { kill(workers[slot].pid, SIGTERM) }
        }
    }
}

extension Daemon {
    /// The worker's life after fork(): serve with the selected model, report through the slot,
    /// and leave with `_exit` (nothing of the supervisor's exit path runs twice).
    func runWorker(channel: WorkerChannel, signals: borrowing SignalFD, listeners: ListenerSet) -> Never {
        role = .worker(channel)
        notifier = WorkerNotifier(channel: channel)
        // Connections taken over at a restart are served by worker 0 only (see `Supervisor.run`).
        if channel.slot != 0 { inherited = [] }
        metricsFile = nil
        logger[metadataKey: "process.index"] = "\(channel.slot)"
        // Several figures a second for the supervisor's sums (the slot, not systemd).
        statusInterval = .milliseconds(200)
        // Nothing in a worker may talk to systemd, even by accident.
        unsetenv("NOTIFY_SOCKET")
        unsetenv("WATCHDOG_USEC")
        unsetenv("WATCHDOG_PID")
        do {
            try serve(signals: signals, listeners: listeners)
        } catch {
            logger.critical("\(error.message)")
            _exit(error.exitStatus)
        }
        _exit(ExitStatus.success)
    }
}
