// SPDX-License-Identifier: Apache-2.0
// `[Server] Processes=` (issue 12, items 1, 2 and 4): a supervisor (the main PID, the only one
// that talks sd_notify) and its worker processes. Which process holds which connection is read
// from /proc: the socket inodes of the established connections on echod's port
// (/proc/net/tcp{,6}) against each worker's /proc/PID/fd.
import Foundation
import Glibc
import Testing

/// The models that run worker processes (the fork model ignores `Processes=`).
let processModels = ["event", "thread"]

extension EchodIntegration {
    @Suite struct Processes {
        /// Connections land on several processes, each of which echoes, and STATUS= sums them
        /// and says how many processes run.
        @Test(arguments: processModels)
        func connectionsSpreadOverProcessesAndStatusSumsThem(model: String) throws {
            try withEchod(config: Echod.config(model: model, workers: 1, extra: "[Server]\nProcesses=3\n")) { server in
                let workers = workerPIDs(server.pid)
                #expect(workers.count == 3, "children of \(server.pid): \(workers)")
                let clients = try openEchoing(port: server.port, count: 60)
                let held = try waitForHeld(server, total: 60)
                #expect(held.values.reduce(0, +) == 60, "per worker: \(held)")
                #expect(held.values.filter { $0 > 0 }.count >= 2, "every connection on one process: \(held)")
                if model == "event" {
                    // One connection at a time finds every worker idle: they take turns (20 each),
                    // not the first-registered one taking all. Half of a fair share leaves room
                    // for a worker that was busy (its heartbeat) when a connection came.
                    #expect(held.count == 3 && held.values.allSatisfy { $0 >= 10 }, "not round robin: \(held)")
                }
                #expect(Set(held.keys).isSubset(of: Set(workers)), "held by \(held.keys), workers \(workers)")
                let status = try server.notify.waitFor(timeout: .seconds(8)) { datagram in
                    notifyValue("STATUS", in: datagram).map { $0.contains("60 open") } ?? false
                }
                let line = status.flatMap { notifyValue("STATUS", in: $0) } ?? ""
                #expect(line.contains("3 processes") && line.contains("60 accepted"), "STATUS: \(server.notify.transcript)")
                withExtendedLifetime(clients) {}
            }
        }

        /// SIGHUP reaches every worker, and READY=1 comes only once all have applied the
        /// configuration: right at READY=1 every worker already runs with the new open-file limit
        /// and the new MaxConnections= (checked per process: each holds exactly that many).
        @Test(arguments: processModels)
        func reloadReachesEveryWorkerBeforeReady(model: String) throws {
            let config = Echod.config(model: model, workers: 1, noFile: 4096, extra: "[Server]\nProcesses=3\n")
            try withEchod(config: config) { server in
                let workers = workerPIDs(server.pid)
                try #require(workers.count == 3)
                try server.dir.write("echod.conf", Echod.config(model: model, workers: 1, maxConnections: "4", noFile: 3000, extra: "[Server]\nProcesses=3\n"))
                _ = try server.notify.drain()
                server.child.signal(SIGHUP)
                #expect(try server.notify.waitFor(line: "RELOADING=1", timeout: .seconds(5)) != nil, "\(server.describeState())")
                #expect(try server.notify.waitFor(line: "READY=1", timeout: .seconds(10)) != nil, "\(server.describeState())")
                for pid in workers {
                    #expect(try openFilesLimit(pid: pid).soft == 3000, "worker \(pid) at READY=1: \(readText("/proc/\(pid)/limits"))")
                }
                // 20 connections, 4 per process: 12 are served, 8 wait in the backlog.
                let clients = try (0..<20).map { _ in try Client(port: server.port) }
                for c in clients { try c.writeAll([7]) }
                let held = try waitForHeld(server, total: 12)
                #expect(held.count == 3 && held.values.allSatisfy { $0 == 4 }, "per worker: \(held)")
                let echoed = waitUntil(timeout: .seconds(5)) { clients.filter { $0.hasInput() }.count >= 12 }
                #expect(echoed)
                pause(.milliseconds(300))
                #expect(clients.filter { $0.hasInput() }.count == 12, "more than 3 x MaxConnections=4 served")
                #expect(workerPIDs(server.pid) == workers, "workers were replaced by a reload")
            }
        }

        /// SIGTERM: STOPPING=1, every worker echoes what it was sent, closes its connections
        /// and ends; the supervisor exits 0 once all have.
        @Test(arguments: processModels)
        func stopDrainsEveryWorkerAndExitsZero(model: String) throws {
            try withEchod(config: Echod.config(model: model, workers: 1, extra: "[Server]\nProcesses=3\n")) { server in
                let workers = workerPIDs(server.pid)
                let clients = try openEchoing(port: server.port, count: 30)
                let held = try waitForHeld(server, total: 30)
                #expect(held.values.filter { $0 > 0 }.count >= 2, "per worker: \(held)")
                let payload = Pattern.bytes(seed: 12, count: 1000)
                for c in clients { try c.writeAll(payload) }
                server.child.signal(SIGTERM)
                #expect(try server.notify.waitFor(line: "STOPPING=1", timeout: .seconds(5)) != nil, "\(server.describeState())")
                for c in clients {
                    let echoed = try c.readToEOF(limit: payload.count)
                    #expect(describeMismatch(received: echoed, expected: payload) == nil)
                    c.close()
                }
                #expect(server.child.waitExit(timeout: .seconds(10)) == .exited(0), "\(server.describeState())")
                for pid in workers { #expect(kill(pid, 0) != 0, "worker \(pid) outlived the supervisor") }
                // Each worker stopped on its own (none was killed at the deadline).
                let log = server.child.stderrText
                for index in 0..<3 {
                    #expect(log.split(separator: "\n").contains {
                        $0.contains("info: stopped ") && $0.contains("process.index=\(index)")
                    }, "worker \(index) did not log its stop:\n\(server.child.stderrTail(40))")
                }
                #expect(!log.contains("still running after the stop timeout"), "\(server.child.stderrTail(40))")
            }
        }

        /// A worker killed with SIGKILL is logged with its signal and replaced; the other workers'
        /// connections keep echoing, and new connections are served.
        @Test(arguments: processModels)
        func killedWorkerIsReplacedAndOthersKeepEchoing(model: String) throws {
            try withEchod(config: Echod.config(model: model, workers: 1, extra: "[Server]\nProcesses=3\n")) { server in
                let workers = workerPIDs(server.pid)
                let clients = try openEchoing(port: server.port, count: 60)
                let held = try waitForHeld(server, total: 60)
                let (victim, lost) = try #require(held.max { $0.value < $1.value })
                try #require(lost < 60, "every connection on one process: \(held)")
                kill(victim, SIGKILL)
                var now: [pid_t] = []
                let replaced = waitUntil(timeout: .seconds(10)) {
                    now = workerPIDs(server.pid)
                    return now.count == 3 && !now.contains(victim)
                }
                #expect(replaced, "workers \(workers), after killing \(victim): \(now) (\(server.describeState()))")
                let logged = waitUntil(timeout: .seconds(5)) { server.child.stderrText.contains("worker process ended; replacing it") }
                #expect(logged && server.child.stderrText.contains("signal 9"), "\(server.child.stderrTail())")
                var echoing = 0
                for (i, c) in clients.enumerated() {
                    let byte = UInt8(truncatingIfNeeded: i)
                    if (try? c.writeAll([byte])) != nil, (try? c.readExactly(1)) == [byte] { echoing += 1 }
                }
                #expect(echoing == 60 - lost, "\(echoing) of 60 echo after a worker holding \(lost) died")
                try roundTrip(port: server.port, count: 5000)
                let status = try server.notify.waitFor(timeout: .seconds(8)) { datagram in
                    notifyValue("STATUS", in: datagram).map { $0.contains("\(60 - lost) open") } ?? false
                }
                #expect(status != nil, "STATUS after the death: \(server.notify.transcript)")
            }
        }

        /// More connections than one process may hold (the open-file limit of each is 2048):
        /// 6,000 held at once over 4 processes, every one echoing.
        @Test(arguments: processModels)
        func holdsMoreThanOneProcessCan(model: String) throws {
            let config = Echod.config(model: model, workers: 1, noFile: 2048, extra: "[Server]\nProcesses=4\n")
            try withEchod(config: config) { server in
                let count = 6000
                let clients = try openEchoing(port: server.port, count: count, batch: 100)
                let held = try waitForHeld(server, total: count, timeout: .seconds(20))
                #expect(held.values.reduce(0, +) == count && held.values.allSatisfy { $0 < 2048 }, "per worker: \(held)")
                for (i, c) in clients.enumerated() {
                    let byte = UInt8(truncatingIfNeeded: i &* 7)
                    try c.writeAll([byte])
                    #expect(try c.readExactly(1) == [byte])
                }
                let status = try server.notify.waitFor(timeout: .seconds(8)) { datagram in
                    notifyValue("STATUS", in: datagram).map { $0.contains("\(count) open") } ?? false
                }
                #expect(status != nil, "STATUS: \(server.notify.transcript.suffix(400))")
            }
        }

        /// IdleTimeoutSec= closes idle connections in every worker, and STATUS= counts them all
        /// (the counters live in a page every process shares).
        @Test func timeoutsOfEveryWorkerAreCounted() throws {
            let config = Echod.config(workers: 1, extra: "[Server]\nProcesses=3\nIdleTimeoutSec=300ms\n")
            try withEchod(config: config) { server in
                let clients = try openEchoing(port: server.port, count: 12)
                let status = try server.notify.waitFor(timeout: .seconds(8)) { datagram in
                    notifyValue("STATUS", in: datagram).map { $0.contains("timeouts: 12 idle") && $0.contains(" 0 open") } ?? false
                }
                #expect(status != nil, "STATUS: \(server.notify.transcript)")
                withExtendedLifetime(clients) {}
            }
        }

        /// WATCHDOG=1 comes from the supervisor while every worker's loops turn, and stops when a
        /// worker hangs (the test-only trigger, forwarded to the first worker).
        @Test func watchdogStopsWhenAWorkerProcessHangs() throws {
            let config = Echod.config(workers: 1, extra: "[Server]\nProcesses=2\n[Debug]\nWatchdogTestTrigger=yes\n")
            try withEchod(config: config, environment: ["WATCHDOG_USEC": "400000"]) { server in
                #expect(try server.notify.waitFor(line: "WATCHDOG=1", timeout: .seconds(3)) != nil, "\(server.describeState())")
                #expect(try server.notify.waitFor(line: "WATCHDOG=1", timeout: .seconds(3)) != nil)
                server.child.signal(SIGUSR1)
                let stalled = waitUntil(timeout: .seconds(5)) {
                    server.child.stderrText.contains("worker process not making progress; withholding watchdog ping")
                }
                #expect(stalled, "\(server.child.stderrTail())")
                _ = try server.notify.drain()
                #expect(try server.notify.waitFor(line: "WATCHDOG=1", timeout: .seconds(2)) == nil, "pinged while a worker hangs")
                server.child.terminate()
            }
        }

        /// The metrics file has the sums of every worker.
        @Test func metricsFileSumsTheWorkers() throws {
            try withTempDir { runtime in
                let path = runtime.file("echod.prom")
                let config = Echod.config(workers: 1, extra: "[Server]\nProcesses=3\n")
                try withEchod(config: config, environment: ["RUNTIME_DIRECTORY": runtime.path]) { server in
                    let clients = try openEchoing(port: server.port, count: 30)
                    let held = try waitForHeld(server, total: 30)
                    #expect(held.values.filter { $0 > 0 }.count >= 2, "per worker: \(held)")
                    var text = ""
                    let seen = waitUntil(timeout: .seconds(10)) {
                        text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
                        return text.contains("echod_connections_open 30\n")
                    }
                    #expect(seen, "\(text)")
                    withExtendedLifetime(clients) {}
                }
            }
        }

        @Test(arguments: ["0", "-2", "1025", "many", "3.5", "99999999999999999999"])
        func badProcessesIsAConfigErrorWithFileAndLine(value: String) throws {
            try withTempDir { dir in
                let config = try dir.write("echod.conf", "[Server]\nModel=event\nListen=127.0.0.1:0\nProcesses=\(value)\n")
                let notify = try NotifyListener(path: dir.file("notify.sock"))
                let run = try Echod.run(["--config", config], in: dir, environment: ["NOTIFY_SOCKET": notify.path])
                #expect(run.status == .exited(Echod.configErrorStatus), "stderr: \(run.stderr)")
                #expect(run.stderr.contains("\(config):4: ") && run.stderr.contains("Processes="), "stderr:\n\(run.stderr)")
                #expect(!run.stderr.contains("listen.address="), "a listener was bound:\n\(run.stderr)")
                #expect(try !notify.drain().contains { notifyLines($0).contains("READY=1") })
            }
        }

        /// `--check-config` shows the processes and the per-process and total figures; with
        /// Model=fork the key draws a warning naming its line.
        @Test func checkConfigShowsPerProcessAndTotalFigures() throws {
            try withTempDir { dir in
                let config = try dir.write(
                    "echod.conf", Echod.config(workers: 2, maxConnections: "1000", extra: "[Server]\nProcesses=3\n"))
                let run = try Echod.run(["--config", config, "--check-config"], in: dir)
                #expect(run.status == .exited(0), "stderr: \(run.stderr)")
                #expect(effectiveSettings(run.stdout)["Processes"] == ["3"], "\(run.stdout)")
                #expect(run.stdout.contains("# 3 processes"), "\(run.stdout)")
                #expect(run.stdout.contains("# Per process: 2 worker threads, MaxConnections=1000"), "\(run.stdout)")
                #expect(run.stdout.contains("# In all: 6 worker threads, 3000 connections"), "\(run.stdout)")

                let fork = try dir.write("fork.conf", "[Server]\nModel=fork\nProcesses=4\n")
                let forkRun = try Echod.run(["--config", fork, "--check-config"], in: dir)
                #expect(forkRun.status == .exited(0))
                #expect(forkRun.stderr.contains("\(fork):3: ") && forkRun.stderr.contains("Model=fork"), "\(forkRun.stderr)")
            }
        }
    }
}

/// The worker processes of a supervisor: its children (/proc/PID/task/PID/children).
func workerPIDs(_ pid: pid_t) -> [pid_t] {
    readText("/proc/\(pid)/task/\(pid)/children").split(separator: " ").compactMap {
        pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines))
    }.sorted()
}

/// Inodes of the sockets process `pid` has open.
func socketInodes(pid: pid_t) -> [UInt64] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
    return entries.compactMap { entry in
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(entry)"),
            target.hasPrefix("socket:[")
        else { return nil }
        return UInt64(target.dropFirst(8).dropLast())
    }
}

/// Connections held by each worker of `server` (its sockets but the listeners, which are the
/// supervisor's sockets), once they add up to `total` (or at the deadline).
func waitForHeld(_ server: EchodServer, total: Int, timeout: Duration = .seconds(10)) throws -> [pid_t: Int] {
    var held: [pid_t: Int] = [:]
    _ = waitUntil(timeout: timeout, interval: .milliseconds(50)) {
        let listeners = Set(socketInodes(pid: server.pid))
        held = Dictionary(
            uniqueKeysWithValues: workerPIDs(server.pid).map { pid in
                (pid, socketInodes(pid: pid).filter { !listeners.contains($0) }.count)
            })
        return held.values.reduce(0, +) == total
    }
    return held
}

/// `count` connections, each of which has echoed one byte (so it is accepted and served).
/// They connect `batch` at a time, then each of the batch echoes: one at a time, every
/// connection finds the workers idle (the event model's workers then take turns); in batches,
/// the workers see bursts.
func openEchoing(port: UInt16, count: Int, batch: Int = 1) throws -> [Client] {
    var clients: [Client] = []
    clients.reserveCapacity(count)
    while clients.count < count {
        let group = try (0..<min(batch, count - clients.count)).map { _ in try Client(port: port) }
        for (j, c) in group.enumerated() {
            let byte = UInt8(truncatingIfNeeded: clients.count + j)
            try c.writeAll([byte])
            guard try c.readExactly(1) == [byte] else { throw HarnessError("connection \(clients.count + j) echoed a wrong byte") }
        }
        clients += group
    }
    return clients
}
