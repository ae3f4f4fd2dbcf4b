// SPDX-License-Identifier: Apache-2.0
// echod as a systemd service sees it: a listening socket at fd 3 (LISTEN_FDS), and the
// sd_notify protocol on NOTIFY_SOCKET (READY=1, STATUS=, RELOADING=1, STOPPING=1).
import CEchoShims
import Foundation
import Glibc
import Testing

extension EchodIntegration {
    @Suite struct SystemdProtocol {
        @Test(arguments: servingModels)
        func readyArrivesWithStatusAndEchoWorksRightAfter(model: String) throws {
            try withEchod(config: Echod.config(model: model), waitReady: false) { server in
                let ready = try server.waitReady()
                #expect(notifyValue("STATUS", in: ready) != nil, "READY=1 datagram without STATUS=: \(ready.debugDescription)")
                try roundTrip(port: server.port, count: 1000)
            }
        }

        /// READY=1 means every worker serves: a client that connects the moment READY=1 arrives
        /// is echoed at once (not after workers that are still starting drain the backlog), and in
        /// the event model every worker thread is already waiting in epoll_wait on its listeners.
        @Test(arguments: servingModels)
        func readyMeansEveryWorkerIsServing(model: String) throws {
            let workers = 3
            try withEchod(config: Echod.config(model: model, workers: workers), waitReady: false) { server in
                try server.waitReady()
                let readyAt = ContinuousClock.now
                if model == "event" {
                    var waiting: Set<pid_t> = []
                    var names: [pid_t: String] = [:]
                    let all = waitUntil(timeout: .milliseconds(1500), interval: .milliseconds(1)) {
                        names = threadNames(server.pid).filter { $0.value.hasPrefix("echod-w") }
                        for tid in names.keys where isInEpollWait(pid: server.pid, tid: tid) { waiting.insert(tid) }
                        return names.count == workers && waiting.count == workers
                    }
                    #expect(names.count == workers, "worker threads (echod-w*) after READY=1: \(names)")
                    #expect(all, "after READY=1 only \(waiting.count) of \(workers) workers reached epoll_wait within 1.5 s: \(threadSyscalls(server.pid))")
                }
                let client = try Client(port: server.port, timeout: .seconds(10))
                try client.writeAll([42])
                #expect(try client.readExactly(1) == [42])
                let took = ContinuousClock.now - readyAt
                #expect(took < .milliseconds(1500), "first echo took \(took) after READY=1")
            }
        }

        @Test func statusIsReportedPeriodically() throws {
            try withEchod { server in
                try roundTrip(port: server.port)
                var statuses: [String] = []
                _ = try server.notify.waitFor(timeout: .seconds(7)) { datagram in
                    if let status = notifyValue("STATUS", in: datagram) { statuses.append(status) }
                    return statuses.count >= 2
                }
                #expect(statuses.count >= 2, "expected STATUS= every ~2 s; got \(server.notify.transcript)")
                for status in statuses {
                    #expect(status.contains("open") && status.contains("accepted"), "STATUS=\(status)")
                }
            }
        }

        @Test(arguments: servingModels)
        func sighupReloadsWithReloadingThenReady(model: String) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                server.child.signal(SIGHUP)
                let reloading = try server.notify.waitFor(line: "RELOADING=1", timeout: .seconds(5))
                #expect(reloading != nil, "no RELOADING=1 after SIGHUP (\(server.describeState()))")
                // Only datagrams after RELOADING=1 are read from here on, so this checks the order.
                let ready = try server.notify.waitFor(line: "READY=1", timeout: .seconds(5))
                #expect(ready != nil, "no READY=1 after RELOADING=1 (\(server.describeState()))")
                try roundTrip(port: server.port, count: 5000)
                #expect(server.child.isRunning)
            }
        }

        /// A reload that fails to parse keeps the old configuration: RELOADING=1, READY=1,
        /// still serving, and the error (PATH:LINE:) logged.
        @Test func sighupWithBrokenConfigKeepsServing() throws {
            try withEchod { server in
                try server.dir.write("echod.conf", "[Server]\nthis line is not an assignment\nModel=event\n")
                server.child.signal(SIGHUP)
                let reloading = try server.notify.waitFor(line: "RELOADING=1", timeout: .seconds(5))
                #expect(reloading != nil, "no RELOADING=1 after SIGHUP (\(server.describeState()))")
                let ready = try server.notify.waitFor(line: "READY=1", timeout: .seconds(5))
                #expect(ready != nil, "no READY=1 after a failed reload (\(server.describeState()))")
                #expect(server.child.isRunning, "\(server.describeState())")
                try roundTrip(port: server.port, count: 5000)
                let logged = waitUntil(timeout: .seconds(5)) { server.child.stderrText.contains("\(server.configPath):2:") }
                #expect(logged, "stderr does not mention \(server.configPath):2: \n\(server.child.stderrTail())")
            }
        }

        @Test(arguments: servingModels, [SIGTERM, SIGINT])
        func terminationSignalGivesStoppingAndExitZero(model: String, signal: Int32) throws {
            try withEchod(config: Echod.config(model: model)) { server in
                try roundTrip(port: server.port)
                server.child.signal(signal)
                let stopping = try server.notify.waitFor(line: "STOPPING=1", timeout: .seconds(5))
                #expect(stopping != nil, "no STOPPING=1 (\(server.describeState()))")
                let status = server.child.waitExit(timeout: .seconds(10))
                #expect(status == .exited(0), "\(server.describeState())")
            }
        }

        /// WatchdogSec= (WATCHDOG_USEC): pings arrive while the workers turn; once a worker is
        /// made to hang (the test-only trigger), the pings stop and the stall is logged.
        @Test func watchdogPingsStopWhenAWorkerHangs() throws {
            let config = Echod.config(extra: "[Debug]\nWatchdogTestTrigger=yes\n")
            try withEchod(config: config, environment: ["WATCHDOG_USEC": "400000"]) { server in
                let first = try server.notify.waitFor(line: "WATCHDOG=1", timeout: .seconds(3))
                #expect(first != nil, "no ping: \(server.notify.transcript)")
                let second = try server.notify.waitFor(line: "WATCHDOG=1", timeout: .seconds(3))
                #expect(second != nil, "pings must repeat")
                server.child.signal(SIGUSR1)
                let stalled = waitUntil(timeout: .seconds(5)) { server.child.stderrText.contains("withholding watchdog ping") }
                #expect(stalled, "\(server.child.stderrTail())")
                // Pings sent before the stall was found may still be queued on the socket: the
                // log line comes after them, so what is queued now is the past.
                _ = try server.notify.drain()
                // From now on no ping: at half of 400 ms, two seconds would carry ten of them.
                let late = try server.notify.waitFor(line: "WATCHDOG=1", timeout: .seconds(2))
                #expect(late == nil, "pinged while hung")
                server.child.terminate()
            }
        }

        /// Without the trigger configured, SIGUSR1 is not caught: it does what it does to any
        /// process (terminates it), rather than hanging a worker.
        @Test func watchdogTriggerIsOffByDefault() throws {
            try withEchod(environment: ["WATCHDOG_USEC": "400000"]) { server in
                let ping = try server.notify.waitFor(line: "WATCHDOG=1", timeout: .seconds(3))
                #expect(ping != nil)
                server.child.signal(SIGUSR1)
                #expect(server.child.waitExit(timeout: .seconds(5)) == .signaled(SIGUSR1))
            }
        }

        /// A passed UDP socket (ListenDatagram= in a socket unit, named like the stream ones) is
        /// told apart by its type and served with the UDP echo.
        @Test(arguments: servingModels)
        func passedUDPSocketIsServed(model: String) throws {
            let udp = try Socket.make(family: AF_INET, type: CEchoShims_SOCK_DGRAM)
            try udp.bind(.v4, port: 0)
            let port = try udp.localPort()
            try withEchod(config: Echod.config(model: model), listener: udp) { server in
                let client = try UDPClient(.v4)
                let payload = Pattern.bytes(seed: 16, count: 1400)
                try client.send(payload, to: port)
                #expect(try client.receive(timeout: .seconds(5)) == payload, "\(server.describeState())")
            }
        }

        /// A passed datagram socket that is not IPv4 or IPv6 is refused at start.
        @Test func passedUnixDatagramSocketIsFatal() throws {
            let unix = try Socket.make(family: AF_UNIX, type: CEchoShims_SOCK_DGRAM)
            try withEchod(listener: unix, waitReady: false) { server in
                let status = server.child.waitExit(timeout: .seconds(10))
                #expect(status != nil && status != .exited(0), "echod served a Unix datagram socket: \(server.describeState())")
                if case .signaled = status { Issue.record("crashed instead of exiting: \(server.describeState())") }
                #expect(server.child.stderrText.contains("neither a listening stream socket nor a UDP socket"), "\(server.describeState())")
                let datagrams = try server.notify.drain()
                #expect(!datagrams.contains { notifyLines($0).contains("READY=1") }, "READY=1 sent: \(datagrams)")
            }
        }

        /// The real tool: systemd-socket-activate binds, waits for the first connection,
        /// then execs echod with LISTEN_FDS; that first connection is served.
        @Test func realSystemdSocketActivate() throws {
            try withTempDir { dir in
                let config = try dir.write("echod.conf", Echod.config())
                let notify = try NotifyListener(path: dir.file("notify.sock"))
                var attempts: [String] = []
                for _ in 0..<5 {
                    let port = try probeFreePort()
                    let child = try Child.spawn(
                        "/usr/bin/systemd-socket-activate",
                        ["-l", "127.0.0.1:\(port)", "--fdname=echo", "-E", "NOTIFY_SOCKET=\(notify.path)", Echod.path, "--config", config],
                        stdoutPath: dir.file("ssa.stdout"), stderrPath: dir.file("ssa.stderr"))
                    defer { child.terminate() }
                    var first: Client?
                    _ = waitUntil(timeout: .seconds(5)) {
                        first = try? Client(port: port)
                        return first != nil || !child.isRunning
                    }
                    guard let first else {
                        attempts.append("port \(port): \(child.exitStatus.map(\.description) ?? "no listener"): \(child.stderrText)")
                        if child.stderrText.contains("Address already in use") { continue }
                        break
                    }
                    let payload = Pattern.bytes(seed: 862, count: 100_000)
                    try first.writeAll(payload)
                    try first.shutdownWrite()
                    let echoed = try first.readToEOF(limit: payload.count)
                    #expect(describeMismatch(received: echoed, expected: payload) == nil)
                    let ready = try notify.waitFor(line: "READY=1", timeout: .seconds(10))
                    #expect(ready != nil, "no READY=1; notify: [\(notify.transcript)]; stderr: \(child.stderrTail())")
                    try roundTrip(port: port, count: 3000)
                    child.signal(SIGTERM)
                    #expect(try notify.waitFor(line: "STOPPING=1", timeout: .seconds(5)) != nil, "notify: [\(notify.transcript)]")
                    #expect(child.waitExit(timeout: .seconds(10)) == .exited(0), "stderr: \(child.stderrTail())")
                    return
                }
                Issue.record("systemd-socket-activate never served: \(attempts)")
            }
        }
    }
}

/// Thread names of `pid` by thread id (/proc/PID/task/TID/comm).
func threadNames(_ pid: pid_t) -> [pid_t: String] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    var names: [pid_t: String] = [:]
    for task in tasks {
        guard let tid = pid_t(task) else { continue }
        names[tid] = readText("/proc/\(pid)/task/\(tid)/comm").trimmingCharacters(in: .whitespacesAndNewlines)
    }
    return names
}

/// The system call each thread of `pid` is blocked in ("running" when on a CPU), for messages.
func threadSyscalls(_ pid: pid_t) -> [String] {
    threadNames(pid).sorted { $0.key < $1.key }.map { tid, name in
        "\(name)[\(tid)]: \(readText("/proc/\(pid)/task/\(tid)/syscall").split(separator: " ").first ?? "?")"
    }
}

/// Whether thread `tid` of `pid` is blocked in epoll_wait/epoll_pwait/epoll_pwait2 (the first
/// field of /proc/PID/task/TID/syscall is the system call number).
func isInEpollWait(pid: pid_t, tid: pid_t) -> Bool {
    #if arch(x86_64)
    let calls: Set<Int> = [232, 281, 441]
    #elseif arch(arm64)
    let calls: Set<Int> = [22, 441]
    #else
    let calls: Set<Int> = []
    #endif
    let text = readText("/proc/\(pid)/task/\(tid)/syscall")
    guard let first = text.split(separator: " ").first, let number = Int(first) else { return false }
    return calls.contains(number)
}
