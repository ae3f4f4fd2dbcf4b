// SPDX-License-Identifier: Apache-2.0
// Child processes started with posix_spawn(3): Foundation.Process cannot place an extra
// descriptor at fd 3, which socket activation needs.
//
// Every child gets exactly fds 0 (/dev/null), 1 and 2 (files, read back as text) and
// optionally 3; everything else is closed by posix_spawn_file_actions_addclosefrom_np, so
// no descriptor of the test runner (another test's client socket, say) leaks into it.
// Signal dispositions and the mask are reset to the defaults, since the test runner may
// ignore SIGPIPE and echod must cope with it on its own.
import Foundation
import Glibc

/// How a child ended, decoded from waitpid's status.
enum ExitStatus: Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    init(waitStatus status: Int32) {
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros, which Swift does not import.
        let signal = status & 0x7f
        self = signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    var description: String {
        switch self {
        case .exited(let code): "exit status \(code)"
        case .signaled(let signal): "killed by signal \(signal) (\(String(cString: strsignal(signal))))"
        }
    }
}

/// A spawned child process. It is killed (SIGKILL) and reaped by `terminate()`, which
/// `deinit` also calls, so no test leaves a process behind even when it throws.
final class Child {
    let pid: pid_t
    let stdoutPath: String
    let stderrPath: String
    private(set) var exitStatus: ExitStatus?

    private init(pid: pid_t, stdoutPath: String, stderrPath: String) {
        self.pid = pid
        self.stdoutPath = stdoutPath
        self.stderrPath = stderrPath
    }

    deinit { terminate() }

    /// Variables that must never leak from the test runner's own environment into a child.
    static let scrubbedEnvironment: Set<String> = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"]

    /// Starts `executable` with `arguments` (argv[0] is the executable).
    ///
    /// - Parameters:
    ///   - environment: added to the runner's environment (minus `scrubbedEnvironment`).
    ///   - fd3: a descriptor to place at fd 3 in the child, without FD_CLOEXEC there.
    ///     The caller's copy should carry FD_CLOEXEC, as every harness socket does.
    ///   - stdoutPath, stderrPath: files (truncated) that receive the child's output.
    static func spawn(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:],
        fd3: Int32? = nil, stdoutPath: String, stderrPath: String
    ) throws -> Child {
        var env = ProcessInfo.processInfo.environment.filter { !scrubbedEnvironment.contains($0.key) }
        env.merge(environment) { _, new in new }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        try check("addopen(0)", posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0))
        let outFlags = O_WRONLY | O_CREAT | O_TRUNC
        try check("addopen(1)", posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, outFlags, 0o644))
        try check("addopen(2)", posix_spawn_file_actions_addopen(&actions, 2, stderrPath, outFlags, 0o644))
        var temporaryCopy: Int32 = -1
        defer { if temporaryCopy >= 0 { close(temporaryCopy) } }
        if var source = fd3 {
            if source == 3 {
                // dup2(3, 3) would leave FD_CLOEXEC set on older libcs: go through a copy.
                temporaryCopy = fcntl(source, F_DUPFD_CLOEXEC, 10)
                guard temporaryCopy >= 0 else { throw HarnessError.system("fcntl(F_DUPFD_CLOEXEC)") }
                source = temporaryCopy
            }
            try check("adddup2", posix_spawn_file_actions_adddup2(&actions, source, 3))
        }
        if let closeFrom = addCloseFrom {
            try check("addclosefrom_np", closeFrom(&actions, fd3 == nil ? 3 : 4))
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in 1..<32 where signal != SIGKILL && signal != SIGSTOP { sigaddset(&defaults, Int32(signal)) }
        try check("setsigmask", posix_spawnattr_setsigmask(&attributes, &emptyMask))
        try check("setsigdefault", posix_spawnattr_setsigdefault(&attributes, &defaults))
        // Its own process group, so that `terminate()` also reaches what it forked (worker
        // processes of `Processes=`, fork-model children) even after it is gone itself.
        try check("setpgroup", posix_spawnattr_setpgroup(&attributes, 0))
        try check("setflags", posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP)))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        try check("posix_spawn(\(executable))", posix_spawn(&pid, executable, &actions, &attributes, argv, envp))
        return Child(pid: pid, stdoutPath: stdoutPath, stderrPath: stderrPath)
    }

    /// Starts `executable` the way a socket-activating service manager would: `listener`
    /// at fd 3, LISTEN_FDS=1, LISTEN_FDNAMES=`name`, and LISTEN_PID equal to the child's
    /// own pid, which only the child can know. A shell sets it and then execs, keeping the pid.
    static func spawnActivated(
        _ executable: String, _ arguments: [String], listener: Int32, name: String = "echo",
        environment: [String: String] = [:], stdoutPath: String, stderrPath: String
    ) throws -> Child {
        var env = environment
        env["LISTEN_FDS"] = "1"
        env["LISTEN_FDNAMES"] = name
        return try spawn(
            // WATCHDOG_PID too: it only counts when the test also sets WATCHDOG_USEC.
            "/bin/sh", ["-c", #"LISTEN_PID=$$ WATCHDOG_PID=$$ exec "$0" "$@""#, executable] + arguments,
            environment: env, fd3: listener, stdoutPath: stdoutPath, stderrPath: stderrPath)
    }

    /// Reaps the child if it has ended, without blocking.
    /// - Returns: whether it is still running.
    @discardableResult
    func poll() -> Bool {
        guard exitStatus == nil else { return false }
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid {
                exitStatus = ExitStatus(waitStatus: status)
                return false
            }
            if result == -1 && errno == EINTR { continue }
            return result == 0
        }
    }

    var isRunning: Bool { poll() }

    /// Polls waitpid(WNOHANG) until the child ends or `timeout` passes.
    /// - Returns: the exit status, or nil if it is still running at the deadline.
    func waitExit(timeout: Duration) -> ExitStatus? {
        _ = waitUntil(timeout: timeout, interval: .milliseconds(5)) { !poll() }
        return exitStatus
    }

    /// Sends `signal` unless the child has already been reaped (its pid may be reused).
    func signal(_ signal: Int32) {
        guard poll() else { return }
        kill(pid, signal)
    }

    /// SIGKILL to the child's whole process group (what it forked too: a worker process whose
    /// supervisor was killed, hung by a test on purpose, would otherwise outlive the test), and
    /// reap the child if still running.
    func terminate() {
        kill(-pid, SIGKILL)
        guard poll() else { return }
        kill(pid, SIGKILL)
        _ = waitExit(timeout: .seconds(10))
    }

    var stdoutText: String { readText(stdoutPath) }
    var stderrText: String { readText(stderrPath) }

    /// The last `lines` lines of stderr, for failure messages.
    func stderrTail(_ lines: Int = 20) -> String {
        stderrText.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// posix_spawn_file_actions_addclosefrom_np (glibc 2.34+), declared only under _GNU_SOURCE,
    /// which Swift's Glibc module does not define: looked up at run time instead.
    private static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()

    private static func check(_ call: String, _ result: Int32) throws {
        // posix_spawn* return the error number instead of setting errno.
        if result != 0 { throw HarnessError.system(call, result) }
    }
}
