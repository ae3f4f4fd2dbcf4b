// SPDX-License-Identifier: Apache-2.0
// Test fixtures: the built binaries, child processes with captured output, echod on an ephemeral
// loopback port, and JSON Schema validation of echoload's --json output.
//
// Every process a test starts is killed and reaped when its owner goes away, so a failing test
// leaves nothing running. Everything listens and connects on loopback only.
import EchoCore
import EchoLoad
import Foundation
import Glibc
import Testing

enum TestError: Error, CustomStringConvertible {
    case failed(String)
    var description: String {
        switch self {
        case .failed(let s): return s
        }
    }
}

/// The binaries built next to the test bundle.
enum Binaries {
    static let directory: String = {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = String(decoding: buffer[0..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return (exe as NSString).deletingLastPathComponent
    }()
    static var echoload: String { directory + "/echoload" }
    static var echod: String { directory + "/echod" }
    /// docs/echoload.schema.json in the source tree.
    static let schema: String = {
        let here = URL(fileURLWithPath: #filePath)
        return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/echoload.schema.json").path
    }()
}

/// A private temporary directory, removed with its owner.
final class TempDir {
    let path: String
    init() throws {
        var template = Array((NSTemporaryDirectory() + "/echoload-test.XXXXXX").utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError.failed("mkdtemp failed") }
        path = String(cString: p)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
    func write(_ name: String, _ text: String) throws -> String {
        try text.write(toFile: file(name), atomically: true, encoding: .utf8)
        return file(name)
    }
}

/// A child process with stdout and stderr captured in files; SIGKILLed and reaped on deinit.
final class Child {
    let pid: pid_t
    let stdoutPath: String
    let stderrPath: String
    private(set) var status: Int32?

    /// - Parameters:
    ///   - fd3: a descriptor to place at fd 3 (socket activation).
    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], fd3: Int32? = nil,
         stdoutPath: String, stderrPath: String) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if let fd3 { posix_spawn_file_actions_adddup2(&actions, fd3, 3) }
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, fd3 == nil ? 3 : 4) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in 1..<32 where s != SIGKILL && s != SIGSTOP { sigaddset(&defaults, Int32(s)) }
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("LISTEN_") && $0.key != "NOTIFY_SOCKET" }
        env.merge(environment) { $1 }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw TestError.failed("posix_spawn(\(executable)): errno \(rc)") }
        self.pid = pid
        self.stdoutPath = stdoutPath
        self.stderrPath = stderrPath
    }

    deinit { kill() }

    /// Reaps without blocking. - Returns: whether it still runs.
    @discardableResult
    func poll() -> Bool {
        guard status == nil else { return false }
        var s: Int32 = 0
        let r = waitpid(pid, &s, WNOHANG)
        if r == pid {
            status = s & 0x7f == 0 ? (s >> 8) & 0xff : 128 + (s & 0x7f)
            return false
        }
        return true
    }

    /// Waits for the exit, at most `seconds`. - Returns: the exit status (128+N if killed), nil on timeout.
    func wait(seconds: Double) -> Int32? {
        let deadline = monotonicNanoseconds() + Int64(seconds * 1e9)
        while poll() {
            if monotonicNanoseconds() >= deadline { return nil }
            usleep(5000)
        }
        return status
    }

    func signal(_ s: Int32) { if poll() { Glibc.kill(pid, s) } }

    func kill() {
        guard poll() else { return }
        Glibc.kill(pid, SIGKILL)
        _ = wait(seconds: 10)
    }

    var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    private static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()
}

/// A finished echoload run.
struct Run: CustomStringConvertible {
    let status: Int32
    let stdout: String
    let stderr: String

    /// stdout parsed as JSON (for --json runs).
    func json() throws -> JSONValue { try JSONValue(parsing: stdout) }

    var description: String { "exit \(status)\n--- stdout\n\(stdout)\n--- stderr\n\(stderr.suffix(3000))" }
}

/// Runs echoload with `arguments`, killing it after `timeout` seconds.
func echoload(_ arguments: [String], timeout: Double = 60) throws -> Run {
    let dir = try TempDir()
    let child = try Child(Binaries.echoload, arguments, stdoutPath: dir.file("out"), stderrPath: dir.file("err"))
    guard let status = child.wait(seconds: timeout) else {
        child.kill()
        throw TestError.failed("echoload \(arguments.joined(separator: " ")) still running after \(timeout) s:\n\(child.stderr)")
    }
    return Run(status: status, stdout: child.stdout, stderr: child.stderr)
}

/// echod's concurrency models, for parameterised tests.
enum ServerModel: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case event, thread, fork
    var testDescription: String { "Model=\(rawValue)" }
}

/// A running echod on 127.0.0.1 with an ephemeral port.
final class Echod {
    let dir: TempDir
    let child: Child
    let address: String

    /// Whether this echod build accepts `Model=model` (the thread and fork models landed later).
    static func supports(_ model: ServerModel) throws -> Bool {
        let dir = try TempDir()
        let config = try dir.write("echod.conf", "[Server]\nModel=\(model.rawValue)\nListen=127.0.0.1:0\n")
        let child = try Child(Binaries.echod, ["--check-config", "--config", config], stdoutPath: dir.file("o"), stderrPath: dir.file("e"))
        return child.wait(seconds: 30) == 0
    }

    /// - Parameter server: more `[Server]` lines (`MaxConnections=10`, ...).
    init(model: ServerModel = .event, workers: Int = 2, server: String = "") throws {
        dir = try TempDir()
        let config = try dir.write(
            "echod.conf", "[Server]\nModel=\(model.rawValue)\nListen=127.0.0.1:0\nWorkers=\(workers)\nStopTimeoutSec=2\n\(server)")
        child = try Child(Binaries.echod, ["--config", config], stdoutPath: dir.file("out"), stderrPath: dir.file("err"))
        address = try Self.waitForListenAddress(child)
    }

    /// echod serving `listener` (a bound, listening socket) through socket activation.
    init(activatedWith listener: Int32, model: ServerModel = .event) throws {
        dir = try TempDir()
        let config = try dir.write("echod.conf", "[Server]\nModel=\(model.rawValue)\nWorkers=2\nStopTimeoutSec=2\n")
        child = try Child(
            "/bin/sh", ["-c", #"LISTEN_PID=$$ exec "$0" "$@""#, Binaries.echod, "--config", config],
            environment: ["LISTEN_FDS": "1", "LISTEN_FDNAMES": "echo"], fd3: listener,
            stdoutPath: dir.file("out"), stderrPath: dir.file("err"))
        address = try Self.waitForListenAddress(child)
    }

    private static func waitForListenAddress(_ child: Child) throws -> String {
        let deadline = monotonicNanoseconds() + 15_000_000_000
        while monotonicNanoseconds() < deadline {
            let log = child.stderr
            if let r = log.range(of: "listen.address=") {
                let rest = log[r.upperBound...]
                let addr = rest.prefix { !$0.isWhitespace && $0 != "," && $0 != "]" && $0 != "\"" }
                if addr.contains(":") { return String(addr) }
            }
            guard child.poll() else { throw TestError.failed("echod exited (\(child.status ?? -1)):\n\(child.stderr)") }
            usleep(10_000)
        }
        throw TestError.failed("echod did not report its listen address:\n\(child.stderr)")
    }

    deinit {
        child.signal(SIGTERM)
        if child.wait(seconds: 5) == nil { child.kill() }
    }

    /// Stops echod (SIGTERM) and reads the total from its "stopped" log line
    /// (`connections.accepted=N`): the server's own count, independent of echoload's report.
    /// - Returns: nil if echod did not exit 0 within 30 s or logged no total.
    func stopAndCountAccepted() -> Int? {
        child.signal(SIGTERM)
        guard child.wait(seconds: 30) == 0 else { return nil }
        guard let line = child.stderr.split(separator: "\n").last(where: { $0.contains("stopped") }),
            let r = line.range(of: "connections.accepted=")
        else { return nil }
        return Int(line[r.upperBound...].prefix { $0.isNumber })
    }
}

/// Validates `json` against docs/echoload.schema.json with python3-jsonschema.
/// - Returns: nil when valid, else the validator's complaint.
func schemaViolation(_ json: String) throws -> String? {
    let dir = try TempDir()
    let doc = try dir.write("result.json", json)
    let script = """
        import json, sys
        import jsonschema
        schema = json.load(open(sys.argv[1]))
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft202012Validator(schema).validate(json.load(open(sys.argv[2])))
        """
    let child = try Child("/usr/bin/env", ["python3", "-c", script, Binaries.schema, doc], stdoutPath: dir.file("o"), stderrPath: dir.file("e"))
    let status = child.wait(seconds: 60)
    if status == 0 { return nil }
    let err = child.stderr
    if err.contains("No module named 'jsonschema'") {
        return "python3-jsonschema is not installed (apt-get install python3-jsonschema)"
    }
    return err.split(separator: "\n").suffix(8).joined(separator: "\n")
}

/// Integer member at a dotted path (`"traffic.messages"`).
func int(_ json: JSONValue, _ path: String) -> Int64? {
    var v: JSONValue? = json
    for key in path.split(separator: ".") { v = v?[String(key)] }
    return v?.intValue
}

func value(_ json: JSONValue, _ path: String) -> JSONValue? {
    var v: JSONValue? = json
    for key in path.split(separator: ".") { v = v?[String(key)] }
    return v
}

/// The sanitizer the tests and echoload were built with (`make test-sanitize` sets
/// ECHOD_TEST_SANITIZER=thread or address), or nil.
let sanitizer: String? = ProcessInfo.processInfo.environment["ECHOD_TEST_SANITIZER"]
