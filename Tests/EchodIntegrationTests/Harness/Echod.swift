// SPDX-License-Identifier: Apache-2.0
// Running the real echod binary: where it is, how it is started (socket-activated or
// binding Listen= itself), and what /proc says about it.
import Foundation
import Glibc

enum Echod {
    /// The echod built next to this test bundle (`$(dirname /proc/self/exe)/echod`).
    /// ECHOD_UNDER_TEST overrides it, for trying the harness against a stand-in.
    static let path: String = {
        if let override = ProcessInfo.processInfo.environment["ECHOD_UNDER_TEST"] { return override }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = length > 0 ? String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        return (exe as NSString).deletingLastPathComponent + "/echod"
    }()

    /// Exit status for a configuration error (EX_CONFIG).
    static let configErrorStatus: Int32 = 78

    /// A configuration file in echod's INI syntax.
    static func config(
        model: String = "event", listen: [String] = ["127.0.0.1:0"], workers: Int = 2,
        maxConnections: String = "auto", stopTimeoutSec: Int = 5, noFile: Int? = 4096, extra: String = ""
    ) -> String {
        var lines = ["[Server]", "Model=\(model)"]
        lines += listen.map { "Listen=\($0)" }
        lines += ["Workers=\(workers)", "MaxConnections=\(maxConnections)", "StopTimeoutSec=\(stopTimeoutSec)"]
        if let noFile { lines += ["[Limits]", "NoFile=\(noFile)"] }
        return lines.joined(separator: "\n") + "\n" + extra
    }

    /// Runs `echod arguments…` to completion (e.g. --check-config) with output captured in `dir`.
    static func run(_ arguments: [String], in dir: TempDir, environment: [String: String] = [:], timeout: Duration = .seconds(15))
        throws -> (status: ExitStatus, stdout: String, stderr: String)
    {
        let child = try Child.spawn(
            path, arguments, environment: environment, stdoutPath: dir.file("run.stdout"), stderrPath: dir.file("run.stderr"))
        defer { child.terminate() }
        guard let status = child.waitExit(timeout: timeout) else {
            throw HarnessError("echod \(arguments.joined(separator: " ")) still running after \(timeout); stderr:\n\(child.stderrTail())")
        }
        return (status, child.stdoutText, child.stderrText)
    }
}

/// How a test's echod gets its listening sockets.
enum Activation: CustomStringConvertible {
    /// The harness binds 127.0.0.1:0 and passes it at fd 3 (LISTEN_FDS=1, LISTEN_PID, LISTEN_FDNAMES=echo).
    case socket
    /// echod binds its Listen= addresses; the ports are read from its `listen.address=` log lines.
    case listen

    var description: String { self == .socket ? "socket activation" : "Listen=" }
}

/// A running echod started by `withEchod`, with its notify socket and addresses.
final class EchodServer {
    let dir: TempDir
    let configPath: String
    let child: Child
    let notify: NotifyListener
    /// Where echod accepts connections, in the order of the listeners.
    private(set) var endpoints: [(host: Loopback, port: UInt16)]

    fileprivate init(dir: TempDir, configPath: String, child: Child, notify: NotifyListener, endpoints: [(Loopback, UInt16)]) {
        self.dir = dir
        self.configPath = configPath
        self.child = child
        self.notify = notify
        self.endpoints = endpoints
    }

    var pid: pid_t { child.pid }
    var port: UInt16 { endpoints[0].port }

    /// Waits for a datagram with READY=1. Throws, with echod's stderr, if none arrives.
    @discardableResult
    func waitReady(timeout: Duration = .seconds(10)) throws -> String {
        if let datagram = try notify.waitFor(line: "READY=1", timeout: timeout) { return datagram }
        throw HarnessError("no READY=1 within \(timeout) (\(describeState()))")
    }

    /// Waits for `count` `listen.address=HOST:PORT` lines on stderr and records them as endpoints.
    fileprivate func readListenAddresses(count: Int, timeout: Duration) throws {
        var found: [(Loopback, UInt16)] = []
        let seen = waitUntil(timeout: timeout) {
            found = parseListenAddresses(child.stderrText)
            return found.count >= count || !child.isRunning
        }
        guard seen, found.count >= count else {
            throw HarnessError("expected \(count) listen.address= lines on stderr within \(timeout), found \(found.count) (\(describeState()))")
        }
        endpoints = found
    }

    /// Exit status (if ended), received notify datagrams and the end of stderr.
    func describeState() -> String {
        let state = child.isRunning ? "still running" : "ended: \(child.exitStatus!)"
        return "echod pid \(pid) \(state); notify: [\(notify.transcript)]; stderr tail:\n\(child.stderrTail())"
    }

    /// Entries in /proc/PID/fd.
    func openDescriptorCount() throws -> Int {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
    }

    /// "fd -> target" for each open descriptor, for failure messages.
    func openDescriptors() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return entries.compactMap(Int.init).sorted().map { fd in
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? "?"
            return "\(fd) -> \(target)"
        }
    }

    /// The descriptor count once it has stayed the same for `quiet` (sampled every 50 ms),
    /// or the last sample after `timeout`.
    func settledDescriptorCount(quiet: Duration = .milliseconds(300), timeout: Duration = .seconds(5)) throws -> Int {
        var count = try openDescriptorCount()
        var stableSince = ContinuousClock.now
        _ = try waitUntil(timeout: timeout, interval: .milliseconds(50)) {
            let now = try openDescriptorCount()
            if now != count { (count, stableSince) = (now, .now) }
            return ContinuousClock.now - stableSince >= quiet
        }
        return count
    }
}

/// Starts echod with `config` written to `echod.conf` in a fresh temp dir, NOTIFY_SOCKET
/// pointing at the harness, then runs `body`; echod is killed and the directory removed
/// afterwards however `body` ends.
///
/// - Parameters:
///   - activation: `.socket` passes a harness-bound 127.0.0.1:0 listener at fd 3; `.listen`
///     lets echod bind Listen= and reads the ports from stderr (one per Listen= line).
///   - waitReady: wait for READY=1 before calling `body`.
func withEchod<R>(
    config: String = Echod.config(), activation: Activation = .socket, listener: Socket? = nil,
    dropIns: [String: String] = [:], waitReady: Bool = true, environment extraEnvironment: [String: String] = [:],
    _ body: (EchodServer) throws -> R
) throws -> R {
    try withTempDir { dir in
        let configPath = try dir.write("echod.conf", config)
        for (name, text) in dropIns { try dir.write("echod.conf.d/\(name)", text) }
        let notify = try NotifyListener(path: dir.file("notify.sock"))
        let environment = ["NOTIFY_SOCKET": notify.path].merging(extraEnvironment) { $1 }
        let arguments = ["--config", configPath]
        let child: Child
        var endpoints: [(Loopback, UInt16)] = []
        switch activation {
        case .socket:
            // The harness's copy is closed once echod has it, so a dead echod means
            // "connection refused" for clients, not a backlog that nobody accepts.
            let (bound, port): (Socket, UInt16) = try listener.map { ($0, try $0.localPort()) } ?? makeListener()
            defer { bound.close() }
            child = try Child.spawnActivated(
                Echod.path, arguments, listener: bound.fd, environment: environment,
                stdoutPath: dir.file("echod.stdout"), stderrPath: dir.file("echod.stderr"))
            endpoints = [(.v4, port)]
        case .listen:
            child = try Child.spawn(
                Echod.path, arguments, environment: environment,
                stdoutPath: dir.file("echod.stdout"), stderrPath: dir.file("echod.stderr"))
        }
        defer { child.terminate() }
        let server = EchodServer(dir: dir, configPath: configPath, child: child, notify: notify, endpoints: endpoints)
        if activation == .listen {
            let count = config.split(separator: "\n").filter { $0.hasPrefix("Listen=") }.count
            try server.readListenAddresses(count: count, timeout: .seconds(10))
        }
        if waitReady { try server.waitReady() }
        return try body(server)
    }
}

/// The `listen.address=HOST:PORT` values in echod's log, in order. HOST may be bracketed
/// ("[::1]:40001") and the value may be quoted.
func parseListenAddresses(_ log: String) -> [(Loopback, UInt16)] {
    log.split(separator: "\n").compactMap { line in
        guard let range = line.range(of: "listen.address=") else { return nil }
        let value = line[range.upperBound...].prefix { !$0.isWhitespace }.trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
        guard let colon = value.lastIndex(of: ":"), let port = UInt16(value[value.index(after: colon)...]) else { return nil }
        let host = value[..<colon].trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard let loopback = Loopback(rawValue: host) else { return nil }
        return (loopback, port)
    }
}

/// Resident memory of `pid` in bytes: the `Rss:` of /proc/PID/smaps_rollup, which walks the
/// page tables (exact), unlike VmRSS, whose per-thread counters may lag by 64 pages each.
func residentBytes(pid: pid_t) throws -> Int {
    let rollup = readText("/proc/\(pid)/smaps_rollup")
    guard let line = rollup.split(separator: "\n").first(where: { $0.hasPrefix("Rss:") }),
        let kilobytes = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap({ Int($0) })
    else { return try procStatusKilobytes(pid: pid, field: "VmRSS") * 1024 }
    return kilobytes * 1024
}

/// A `kB` field of /proc/PID/status ("VmRSS:     1234 kB" → 1234).
func procStatusKilobytes(pid: pid_t, field: String) throws -> Int {
    let status = readText("/proc/\(pid)/status")
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }),
        let value = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap({ Int($0) })
    else { throw HarnessError("no \(field) in /proc/\(pid)/status") }
    return value
}

/// The soft and hard "Max open files" of /proc/PID/limits (nil for "unlimited").
func openFilesLimit(pid: pid_t) throws -> (soft: Int?, hard: Int?) {
    let limits = readText("/proc/\(pid)/limits")
    guard let line = limits.split(separator: "\n").first(where: { $0.hasPrefix("Max open files") }) else {
        throw HarnessError("no 'Max open files' line in /proc/\(pid)/limits:\n\(limits)")
    }
    let fields = line.dropFirst("Max open files".count).split(separator: " ")
    guard fields.count >= 2 else { throw HarnessError("unexpected limits line: \(line)") }
    return (Int(fields[0]), Int(fields[1]))
}

/// The sanitizer echod and the tests were built with (`make test-sanitize` sets
/// ECHOD_TEST_SANITIZER=thread or address), or nil. Under one, resident memory includes the
/// sanitizer's shadow memory and allocator quarantine, so the memory bounds (Backpressure) are
/// not asserted; everything else is.
let sanitizer: String? = ProcessInfo.processInfo.environment["ECHOD_TEST_SANITIZER"]
