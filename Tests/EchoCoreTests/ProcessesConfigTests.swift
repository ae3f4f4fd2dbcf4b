// SPDX-License-Identifier: Apache-2.0
// `[Server] Processes=` as configuration (issue 12, items 1 and 4): its syntax, what it resolves
// to, what Workers=0 means beside it, the per-process and total figures, a reload, and the
// shared table through which the supervisor hands its workers a reloaded configuration.
import Glibc
import Testing

@testable import EchoCore

@Suite struct ProcessesConfigTests {
    @Test func parsesNumbersAndAuto() throws {
        #expect(try ConfigFixture.parse("[Server]\nProcesses=4\n").processes == .count(4))
        #expect(try ConfigFixture.parse("[Server]\nProcesses=auto\n").processes == .auto)
        #expect(try ConfigFixture.parse("[Server]\nProcesses=1024\n").processes == .count(1024))
        #expect(Configuration().processes == .count(1))
    }

    @Test(arguments: ["0", "-1", "1025", "four", "2x", "1e3", "+2", "18446744073709551617"])
    func rejectsBadValuesWithTheLine(value: String) {
        let errors = ConfigFixture.rejection(of: "[Server]\nModel=event\nProcesses=\(value)\n")
        #expect(errors.count == 1 && errors[0].hasPrefix("test.conf:3: ") && errors[0].contains("Processes="), "\(errors)")
    }

    @Test func resolvesAutoToTheCPUsAndForkToOne() {
        var c = Configuration()
        #expect(c.processCount(availableCPUs: 8) == 1)
        c.processes = .auto
        #expect(c.processCount(availableCPUs: 8) == 8)
        #expect(c.processCount(availableCPUs: 5000) == ProcessCount.maximum)
        c.processes = .count(3)
        #expect(c.processCount(availableCPUs: 8) == 3)
        c.model = .thread
        #expect(c.processCount(availableCPUs: 8) == 3)
        c.model = .fork
        #expect(c.processCount(availableCPUs: 8) == 1)
    }

    @Test func forkModelWarnsAboutProcesses() throws {
        let (_, warnings) = try ConfigurationLoader.apply(text: "[Server]\nModel=fork\nProcesses=2\n", file: "f.conf", to: Configuration())
        #expect(warnings.map { "\($0)" }.contains { $0.hasPrefix("f.conf:3: ") && $0.contains("Model=fork") }, "\(warnings)")
        let (_, none) = try ConfigurationLoader.apply(text: "[Server]\nModel=thread\nProcesses=2\n", file: "t.conf", to: Configuration())
        #expect(none.isEmpty, "\(none)")
    }

    /// Workers=0 shares the CPUs out among the processes (at least one thread each); an
    /// explicit Workers= is per process.
    @Test func workersZeroIsCPUsDividedByProcesses() {
        var c = Configuration()
        #expect(EventModel.workerCount(c, availableCPUs: 8) == 8)
        c.processes = .auto
        #expect(EventModel.workerCount(c, availableCPUs: 8) == 1)
        c.processes = .count(2)
        #expect(EventModel.workerCount(c, availableCPUs: 8) == 4)
        c.processes = .count(3)
        #expect(EventModel.workerCount(c, availableCPUs: 2) == 1)
        c.workers = 5
        #expect(EventModel.workerCount(c, availableCPUs: 2) == 5)
    }

    @Test func planGivesPerProcessAndTotalFigures() {
        var c = Configuration()
        c.processes = .count(4)
        c.workers = 2
        let plan = ProcessPlan(c, availableCPUs: 2, openFileLimit: 2048)
        // auto: 2048 less the daemon's 64 and two descriptors per worker thread.
        #expect(plan.processes == 4 && plan.workersPerProcess == 2 && plan.threadsPerProcess == nil)
        #expect(plan.connectionsPerProcess == 2048 - 64 - 4)
        let text = plan.rendered(c)
        #expect(text.contains("# 4 processes, each serving every listener."), "\(text)")
        #expect(text.contains("# In all: 8 worker threads, \(4 * (2048 - 68)) connections."), "\(text)")

        c.model = .thread
        c.maxConnections = .limit(1000)
        c.maxThreads = 500
        let threads = ProcessPlan(c, availableCPUs: 2, openFileLimit: 2048)
        #expect(threads.connectionsPerProcess == 500)
        #expect(threads.rendered(c).contains("# In all: 2000 connections, 2000 threads."), "\(threads.rendered(c))")
    }

    @Test func changingProcessesWaitsForARestart() {
        var new = Configuration()
        new.processes = .count(3)
        let plan = ReloadPlan(running: Configuration(), loaded: new, socketsPassed: true)
        #expect(plan.restartKeys == ["Processes="])
        #expect(plan.applied.processes == .count(1))
    }

    /// What the supervisor publishes, a worker reads back as the same settings (Listen= aside,
    /// which the supervisor leaves out).
    @Test func processTableCarriesTheReloadedConfiguration() throws {
        let table = try ProcessTable(slots: 2)
        var c = try ConfigFixture.parse("[Server]\nModel=thread\nMaxConnections=77\nIdleTimeoutSec=3s\n[Limits]\nNoFile=3000\n")
        c.listen = []
        #expect(table.publishConfiguration(c.rendered(), generation: 5))
        let (generation, text) = table.configuration()
        #expect(generation == 5)
        let read = try ConfigurationLoader.apply(text: text, file: "<supervisor>", to: Configuration()).0
        #expect(ConfigFixture.settingsOnly(read) == ConfigFixture.settingsOnly(c))
        #expect(!table.publishConfiguration(String(repeating: "#", count: ProcessTable.textCapacity + 1), generation: 6))
        #expect(table.generation == 5)
    }

    /// The slots are shared with a forked child: what it publishes, the parent reads.
    @Test func processTableSlotsAreSharedAcrossFork() throws {
        let table = try ProcessTable(slots: 3)
        table.reset(1, generation: 9)
        var s = ServerSnapshot()
        s.open = 3
        s.accepted = 10
        s.bytesEchoed = 12345
        let pid = fork()
        if pid == 0 {
            table.publish(1, s)
            table.store(1, .ready, 1)
            table.increment(1, .heartbeat)
            _exit(0)
        }
        var status: Int32 = 0
        #expect(waitpid(pid, &status, 0) == pid && status == 0)
        #expect(table.snapshot(1) == s)
        #expect(table.load(1, .ready) == 1 && table.load(1, .heartbeat) == 1 && table.load(1, .generation) == 9)
        #expect(table.snapshot(0) == ServerSnapshot())
        table.reset(1, generation: 10)
        #expect(table.snapshot(1) == ServerSnapshot() && table.load(1, .heartbeat) == 1)
    }

    @Test func waitStatusesAreDescribed() {
        #expect(Supervisor.describe(1 << 8) == "exit status 1")
        #expect(Supervisor.describe(SIGKILL) == "signal 9 (SIGKILL)")
        #expect(Supervisor.exitCode(78 << 8) == 78)
        #expect(Supervisor.exitCode(SIGKILL) == nil)
    }
}
