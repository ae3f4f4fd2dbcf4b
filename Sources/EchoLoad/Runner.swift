// SPDX-License-Identifier: Apache-2.0
// Entry points of the engine: `LoadRunner.run` for a whole run (checks, descriptor limit,
// reachability, then the driver the model asks for) and `LoadRunner.runChild` for one part of a
// split run.
import CEchoShims
import EchoCore
import Glibc
import Synchronization

public enum LoadRunner {
    /// Runs `options` to the end and returns the merged result.
    ///
    /// - Parameter progress: where the progress line goes.
    /// - Throws: `LoadError.usage` for impossible options, `.unreachable` when a first probe
    ///   connection to the target fails, `.system` when the client itself cannot run.
    public static func run(_ options: LoadOptions, progress: ProgressReporter) throws(LoadError) -> LoadResult {
        var options = options
        try applyScalePlan(&options, progress: progress)
        try options.validate()
        Signals.ignoreSIGPIPE()
        if options.mode == .udp { return try DatagramDriver.run(options) }
        let perProcess = options.model == .fork ? 1 : (options.connections + options.processes - 1) / options.processes
        try raiseDescriptorLimit(needed: perProcess, splittable: options.model != .fork)
        try preflight(options)
        // Before any thread exists, so that every thread (and child) inherits the blocked mask.
        let signals = StopSignals.install()
        defer { if signals >= 0 { closeNoRetry(signals) } }
        if options.processes > 1 || options.model == .fork {
            return try ProcessDriver.run(options, progress: progress, signals: signals)
        }
        let control = try RunControl(options: options, startsAlone: true)
        let (tally, workers) = try runInProcess(options, control: control, signals: signals, progress: progress)
        let part = PartSummary(
            index: 0, pid: getpid(), connections: options.connections, established: tally.established,
            held: tally.held, messages: tally.messages, faults: tally.faults + tally.connectFailed, exitStatus: 0)
        var result = LoadResult(options: options, workers: workers, tally: tally, parts: [part])
        result.rampStoppedBy = control.rampReason.withLock { $0 }
        result.setWindow(startedAt: control.startGate.current, startAtMonotonic: control.startAtMonotonic)
        return result
    }

    /// Runs one part of a split run. Its stdin (`input`) carries the spec (one JSON line), then the
    /// parent's `connect`, `start` and `stop` messages; its stdout carries `armed`, `ready`,
    /// progress and the result, as JSON lines (see Wire.swift).
    /// - Returns: the process exit status (0 once a result is written).
    public static func runChild(input: Int32) -> Int32 {
        Signals.ignoreSIGPIPE()
        let signals = StopSignals.install()
        let reader = LineReader(fd: input)
        let options: LoadOptions
        let control: RunControl
        do {
            guard let spec = reader.next() else { throw LoadError.usage("internal: no child spec on stdin") }
            options = try LoadOptions(wire: try JSONValue(parsing: spec))
            try raiseDescriptorLimit(needed: options.connections, splittable: false)
            control = try RunControl(options: options, startsAlone: false)
        } catch let e as LoadError {
            writeAll(2, "echoload child: \(e)\n")
            return 2
        } catch {
            writeAll(2, "echoload child: \(error)\n")
            return 2
        }
        do {
            // The parent's messages; never joined: the process exits once the result is written.
            try JoinableThread.detach(name: "echoload-ctl") { [control] in
                ChildProtocol.follow(reader, control)
            }
        } catch {
            writeAll(2, "echoload child: cannot start its control thread: \(error)\n")
            return 2
        }
        do {
            let (tally, _) = try runInProcess(
                options, control: control, signals: signals, progress: ProgressReporter(style: .childPipe))
            let line = JSONValue.object([("type", .string("result")), ("tally", tally.wireJSON)]).text + "\n"
            return writeAll(1, line) ? 0 : 2
        } catch {
            writeAll(2, "echoload child: \(error)\n")
            return 2
        }
    }

    static func runInProcess(
        _ options: LoadOptions, control: RunControl, signals: Int32, progress: ProgressReporter
    ) throws(LoadError) -> (Tally, Int) {
        let live = LiveCounters()
        let finished = Atomic<Bool>(false)
        let requested = options.connections
        progress.begin()
        let sampler: JoinableThread?
        // max run alone: the client-side guards (a split run's parent checks them itself).
        let rampGuard = control.startsAlone ? options.ramp.map { RampGuard(limits: $0, started: monotonicNanoseconds()) } : nil
        do {
            // Progress every second; SIGINT/SIGTERM stop the run (a second one ends the process).
            sampler = try JoinableThread(name: "echoload-prog") { [live, control] in
                var p = pollfd(fd: signals, events: Int16(POLLIN), revents: 0)
                while !finished.load(ordering: .acquiring) {
                    if poll(&p, signals >= 0 ? 1 : 0, 100) > 0 {
                        let s = StopSignals.next(signals)
                        if s != 0 {
                            if control.stoppedAt != 0 && control.stopSignal.load(ordering: .relaxed) != 0 { _exit(128 + s) }
                            control.stop(at: monotonicNanoseconds(), signal: s)
                        }
                    }
                    progress.report(live.snapshot, requested: requested)
                    if let g = rampGuard, control.rampGate.current == 0, control.startGate.current == 0,
                        let r = g.check(now: monotonicNanoseconds())
                    {
                        control.stopRamp(at: r.at, reason: r.reason)
                    }
                }
            }
        } catch {
            sampler = nil
        }
        defer {
            finished.store(true, ordering: .releasing)
            sampler?.join()
            progress.end()
        }
        var result: (Tally, Int)
        switch options.model {
        case .event:
            let (t, w) = try EventDriver.run(options, control: control, live: live)
            result = (t, w)
        case .thread, .fork:
            result = (try ThreadDriver.run(options, control: control, live: live), 0)
        }
        result.0.interruptedBy = control.stopSignal.load(ordering: .relaxed)
        if control.stoppedAt != 0 && result.0.interruptedBy == 0 { result.0.interruptedBy = -1 }
        return result
    }

    /// hold: processes and source addresses from the host's limits where the command line left
    /// them to echoload (`ScalePlan`); says what it chose on stderr (unless quiet) and in the report.
    static func applyScalePlan(_ options: inout LoadOptions, progress: ProgressReporter) throws(LoadError) {
        guard options.mode == .hold, options.model != .fork, options.autoProcesses || options.autoSources else { return }
        let host = ScalePlan.hostLimits()
        guard let plan = try ScalePlan.choose(
            connections: options.connections, target: options.target, chooseProcesses: options.autoProcesses,
            chooseSources: options.autoSources, hardLimit: host.hardLimit, ports: host.ports)
        else { return }
        if options.autoProcesses { options.processes = plan.processes }
        if options.autoSources && !plan.sources.isEmpty { options.sources = plan.sources }
        options.plan = plan.summary
        if progress.style != .none { writeAll(2, "echoload: chose \(plan.summary)\n") }
    }

    /// Raises the soft RLIMIT_NOFILE to the hard limit, and refuses a share that cannot fit.
    static func raiseDescriptorLimit(needed connections: Int, splittable: Bool) throws(LoadError) {
        guard var limit = try? ResourceLimits.get(ResourceLimits.noFile) else { return }
        let needed = UInt64(connections + 64)
        if limit.soft < limit.hard && limit.soft < needed {
            limit.soft = limit.hard
            try? ResourceLimits.set(ResourceLimits.noFile, limit)
        }
        if limit.hard < needed {
            let advice = splittable
                ? "; split the connections with --processes \((connections + 64) / Int(max(limit.hard, 128) - 64) + 1) or more"
                : ""
            throw .usage("echoload: \(connections) connections in one process need about \(needed) descriptors, but the hard limit (RLIMIT_NOFILE) is \(limit.hard)\(advice)")
        }
    }

    /// One connection to the target (from the first source address, if any) before the run, so
    /// that an unreachable target or a bad source is one clear line rather than N failures.
    static func preflight(_ options: LoadOptions) throws(LoadError) {
        let target = options.target
        var err: Int32 = 0
        switch ClientSocket.open(to: target, from: options.sources.first, blocking: false) {
        case .connected(let fd):
            closeNoRetry(fd)
        case .inProgress(let fd):
            defer { closeNoRetry(fd) }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let ms = Int32(min(options.connectTimeout, 5_000_000_000) / 1_000_000)
            var n: Int32
            repeat { n = poll(&p, 1, ms) } while n < 0 && errno == EINTR
            err = n == 0 ? ETIMEDOUT : ClientSocket.pendingError(fd, hangup: false)
        case .failed(let step, let e):
            if step == .bind, let source = options.sources.first {
                throw .usage("echoload: cannot use source address \(source.host): \(SystemError("bind", errno: e).reason)")
            }
            if step == .socket { throw .system("echoload: socket: \(SystemError("socket", errno: e))") }
            err = e
        }
        if err != 0 {
            throw .unreachable("echoload: cannot connect to \(target): \(SystemError("connect", errno: err).reason) (\(errnoName(err)))")
        }
    }
}
