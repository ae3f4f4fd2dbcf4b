// SPDX-License-Identifier: Apache-2.0
// Splitting a run across processes: `--processes P` (each child runs the event or thread model
// on its share) and `--model fork` (one process per connection, blocking I/O). This is how a run
// goes past the per-process descriptor ceiling.
//
// Children are this same binary, started with posix_spawn(3) (never fork(2): the parent may have
// threads, and a forked copy of a multithreaded process may deadlock on a lock another thread
// held) as `echoload _child`, reading its options (JSON) from its stdin, a pipe: a spec may list
// tens of thousands of source addresses, more than one argv string may hold (MAX_ARG_STRLEN,
// 128 KiB; posix_spawn failed with E2BIG). The pipe stays open for the run's barriers: the parent
// tells every child when connects may start and when the run starts (once every child is ready),
// and to stop on SIGINT/SIGTERM (see Wire.swift). A child writes JSON lines on its stdout, a
// pipe to the parent. The parent stays single-threaded: it polls the pipes and its signalfd,
// sums the children's progress for the progress line, and merges their results.
import CEchoShims
import EchoCore
import Glibc

public enum ProcessDriver {
    /// The hidden subcommand the executable must route to `LoadRunner.runChild(spec:)`.
    public static let childCommand = "_child"

    /// The options of each part: connection shares, index bases and rate shares.
    static func plan(_ options: LoadOptions) -> [LoadOptions] {
        let parts = options.model == .fork ? options.connections : options.processes
        var out: [LoadOptions] = []
        var base = options.connectionIndexBase
        for p in 0..<parts {
            var o = options
            o.connections = options.connections / parts + (p < options.connections % parts ? 1 : 0)
            o.connectionIndexBase = base
            o.processes = 1
            if options.model == .fork { o.model = .thread }
            // The rate stays the whole run's: each child lays out its connections' share of the
            // one global schedule (see RunControl, RateSchedule).
            o.totalConnections = options.totalConnections
            base += o.connections
            out.append(o)
        }
        return out
    }

    private final class ChildState {
        let index: Int
        let options: LoadOptions
        let pid: pid_t
        var fd: Int32
        /// The write end of the child's stdin (-1 once closed).
        var input: Int32
        var armed = false
        var ready = false
        var probed = false
        var buffer: [UInt8] = []
        var progress = ProgressSnapshot()
        var tally: Tally?
        var exitStatus: Int32 = -1
        init(index: Int, options: LoadOptions, pid: pid_t, fd: Int32, input: Int32) {
            self.index = index
            self.options = options
            self.pid = pid
            self.fd = fd
            self.input = input
        }

        /// Sends one control line; a child that is gone just does not get it.
        func send(_ line: String) {
            if input >= 0 { writeAll(input, line) }
        }

        func closeInput() {
            if input >= 0 { closeNoRetry(input) }
            input = -1
        }
    }

    /// Lead time of the `connect` and `start` times the parent sends, so that every child has the
    /// message before the time comes (writing to a thousand pipes takes a while).
    static func leadTime(children: Int) -> Int64 { 50_000_000 + Int64(children) * 200_000 }

    /// - Parameter signals: a signalfd for SIGINT and SIGTERM (or -1).
    static func run(_ options: LoadOptions, progress: ProgressReporter, signals: Int32) throws(LoadError) -> LoadResult {
        let executable = try selfExecutable()
        var children: [ChildState] = []
        for (i, part) in plan(options).enumerated() {
            do {
                let (pid, fd, input) = try spawn(executable, spec: part.wireJSON.text)
                children.append(ChildState(index: i, options: part, pid: pid, fd: fd, input: input))
            } catch {
                for c in children {
                    kill(c.pid, SIGKILL)
                    var status: Int32 = 0
                    _ = waitpid(c.pid, &status, 0)
                    closeNoRetry(c.fd)
                    c.closeInput()
                }
                throw .system("echoload: cannot start child process \(i): \(error)")
            }
        }
        progress.begin()
        var pollfds = [pollfd](repeating: pollfd(), count: children.count + 1)
        var chunk = [UInt8](repeating: 0, count: 65536)
        var connectSent = false
        var startSent = false
        var releaseSent = false
        var rampSent = false
        var rampStop: (at: Int64, reason: String)? = nil
        let rampGuard = options.ramp.map { RampGuard(limits: $0, started: monotonicNanoseconds()) }
        var startedAt: Int64 = 0
        let startAtMonotonic = options.startAt.map { WallClock.monotonic(fromWall: $0) }
        var interruptedBy: Int32 = 0
        while children.contains(where: { $0.fd >= 0 }) {
            // The barriers: a child that is gone (its stdout closed) no longer holds them up.
            let live = children.filter { $0.fd >= 0 }
            if !connectSent && live.allSatisfy({ $0.armed }) {
                connectSent = true
                let at = monotonicNanoseconds() + leadTime(children: live.count)
                for c in children { c.send(ChildProtocol.message("connect", at: at)) }
            }
            var pollMilliseconds: Int32 = 200
            if connectSent && !startSent && live.allSatisfy({ $0.ready }) {
                // The start goes out with its lead time, or (with --start-at) that long before it.
                let lead = leadTime(children: live.count)
                let now = monotonicNanoseconds()
                // With --start-at, the message goes out two lead times ahead, carrying that time.
                let due = startAtMonotonic.map { max(now + lead, $0) } ?? now + lead
                if due - 2 * lead <= now {
                    startSent = true
                    startedAt = due
                    for c in children { c.send(ChildProtocol.message("start", at: due)) }
                } else {
                    pollMilliseconds = Int32(min(200, (due - 2 * lead - now) / 1_000_000 + 1))
                }
            }
            if startSent && !releaseSent && live.allSatisfy({ $0.probed }) {
                releaseSent = true
                let at = monotonicNanoseconds()
                for c in children { c.send(ChildProtocol.message("release", at: at)) }
            }
            if !rampSent && !startSent, let r = rampStop ?? rampGuard?.check(now: monotonicNanoseconds()) {
                rampSent = true
                rampStop = r
                let line = JSONValue.object([("type", .string("ramp")), ("at", .int(r.at)), ("reason", .string(r.reason))]).text + "\n"
                for c in children { c.send(line) }
            }
            for (i, c) in children.enumerated() {
                pollfds[i] = pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)
            }
            pollfds[children.count] = pollfd(fd: signals, events: Int16(POLLIN), revents: 0)
            let n = poll(&pollfds, nfds_t(pollfds.count), pollMilliseconds)
            if n < 0 && errno != EINTR { break }
            if signals >= 0 && pollfds[children.count].revents != 0 {
                let s = StopSignals.next(signals)
                if s != 0 {
                    if interruptedBy != 0 {
                        for c in children { kill(c.pid, SIGKILL) }
                        _exit(128 + s)
                    }
                    interruptedBy = s
                    let at = monotonicNanoseconds()
                    for c in children { c.send(ChildProtocol.message("stop", at: at, signal: s)) }
                }
            }
            for (i, c) in children.enumerated() where c.fd >= 0 && pollfds[i].revents != 0 {
                let got = chunk.withUnsafeMutableBytes { Glibc.read(c.fd, $0.baseAddress, $0.count) }
                if got > 0 {
                    c.buffer.append(contentsOf: chunk[0..<got])
                    while let nl = c.buffer.firstIndex(of: UInt8(ascii: "\n")) {
                        let line = String(decoding: c.buffer[..<nl], as: UTF8.self)
                        c.buffer.removeSubrange(...nl)
                        if let r = handle(line, c), rampStop == nil { rampStop = r }
                    }
                } else if got == 0 || (errno != EINTR && errno != EAGAIN) {
                    closeNoRetry(c.fd)
                    c.fd = -1
                    c.closeInput()
                }
            }
            progress.report(children.reduce(ProgressSnapshot()) { $0 + $1.progress }, requested: options.connections)
        }
        for c in children {
            var status: Int32 = 0
            while waitpid(c.pid, &status, 0) == -1 && errno == EINTR {}
            c.exitStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        }
        progress.end()

        var tally = Tally()
        var parts: [PartSummary] = []
        var notes: [String] = []
        var workers = 0
        for c in children {
            let t = c.tally ?? Tally()
            if c.tally == nil {
                notes.append("process \(c.index) (pid \(c.pid)) exited with status \(c.exitStatus) without a result")
            }
            tally.merge(t)
            if c.tally == nil { tally.requested += c.options.connections }
            workers = max(workers, c.options.model == .event ? c.options.effectiveWorkers : 0)
            parts.append(PartSummary(
                index: c.index, pid: c.pid, connections: c.options.connections, established: t.established,
                held: t.held, messages: t.messages, faults: t.faults + t.connectFailed, exitStatus: c.exitStatus))
        }
        if tally.interruptedBy == 0 { tally.interruptedBy = interruptedBy }
        var result = LoadResult(options: options, workers: workers, tally: tally, parts: parts)
        result.notes = notes
        result.rampStoppedBy = rampStop?.reason
        result.setWindow(startedAt: startedAt, startAtMonotonic: startAtMonotonic)
        return result
    }

    /// Takes one line from child `c`. - Returns: a ramp stop the child reported (max), if any.
    private static func handle(_ line: String, _ c: ChildState) -> (at: Int64, reason: String)? {
        guard let json = try? JSONValue(parsing: line) else { return nil }
        switch json["type"]?.stringValue {
        case "armed": c.armed = true
        case "ready": c.ready = true
        case "probed": c.probed = true
        case "ramp":
            if let at = json["at"]?.intValue { return (at, json["reason"]?.stringValue ?? "a process stopped its ramp") }
        case "progress": c.progress = ProgressSnapshot(wire: json)
        case "result":
            if let t = json["tally"] { c.tally = Tally(wire: t) }
            c.closeInput()  // done with this child
        default: break
        }
        return nil
    }

    /// The path of the running executable.
    static func selfExecutable() throws(LoadError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { throw .system("echoload: cannot read /proc/self/exe: \(SystemError("readlink", errno: errno))") }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Starts `executable _child` with `spec` (one line) on its stdin, a pipe kept open for the
    /// control messages, and its stdout on a new pipe.
    /// - Returns: the child's pid, the stdout pipe's read end and the stdin pipe's write end
    ///   (both close-on-exec).
    static func spawn(_ executable: String, spec: String) throws(SystemError) -> (pid_t, Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        try syscall("pipe2") { CEchoShims_pipe2(&fds, O_CLOEXEC) }
        var input: [Int32] = [-1, -1]
        do {
            try syscall("pipe2") { CEchoShims_pipe2(&input, O_CLOEXEC) }
        } catch {
            closeNoRetry(fds[0])
            closeNoRetry(fds[1])
            throw error
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // dup2 onto fds 0 and 1 clears FD_CLOEXEC there; the originals close on exec.
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        let words: [String] = ["echoload", childCommand]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        closeNoRetry(fds[1])
        closeNoRetry(input[0])
        guard rc == 0 else {
            closeNoRetry(fds[0])
            closeNoRetry(input[1])
            throw SystemError("posix_spawn(\(executable))", errno: rc)
        }
        // The child reads its spec first thing; if it dies before, the write fails (EPIPE, SIGPIPE
        // is ignored) and the child is reported as having exited without a result.
        writeAll(input[1], spec + "\n")
        return (pid, fds[0], input[1])
    }
}
