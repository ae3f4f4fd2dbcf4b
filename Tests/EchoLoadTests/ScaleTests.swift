// SPDX-License-Identifier: Apache-2.0
// echoload at scale: the processes and source addresses `hold` chooses from the host's limits
// (issue 12 item 5), the figures a large run reports (item 6: connects per second, failures by
// kind), held meaning open at one instant even against a server that frees slots as probes
// finish, and `echoload max` (issue 11 item 11) against echod's MaxConnections= and its own --limit.
import EchoCore
import EchoLoad
import Glibc
import Testing

@Suite struct ScalePlans {
    let ports = 32768...60999  // 28,232 ports: 12,705 per source address
    func target(_ s: String) throws -> SocketAddress { try SocketAddress(parsing: s) }

    @Test("one million to a loopback target: 53 processes under a 20,000 ceiling, 79 sources from 127.0.0.2")
    func oneMillionOnLoopback() throws {
        let plan = try #require(try ScalePlan.choose(
            connections: 1_000_000, target: try target("127.0.0.1:7"), chooseProcesses: true, chooseSources: true,
            hardLimit: 20_000, ports: ports))
        #expect(plan.processes == 53)  // 19,000 each (1,000 kept back)
        #expect(plan.sources.count == 79)
        #expect(plan.sources.first?.host == "127.0.0.2" && plan.sources.last?.host == "127.0.0.80")
        #expect(plan.summary.contains("53 processes") && plan.summary.contains("127.0.0.2-127.0.0.80"), "\(plan.summary)")
    }

    @Test("the target's own address is not used as a source; --processes and --source each override")
    func overrides() throws {
        let plan = try #require(try ScalePlan.choose(
            connections: 60_000, target: try target("127.0.0.3:7"), chooseProcesses: false, chooseSources: true,
            hardLimit: 20_000, ports: ports))
        #expect(plan.processes == 1)
        #expect(plan.sources.map(\.host) == ["127.0.0.2", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"])
        let processesOnly = try #require(try ScalePlan.choose(
            connections: 60_000, target: try target("127.0.0.1:7"), chooseProcesses: true, chooseSources: false,
            hardLimit: 20_000, ports: ports))
        #expect(processesOnly.processes == 4 && processesOnly.sources.isEmpty)
        // Small runs need nothing.
        #expect(try ScalePlan.choose(connections: 12_000, target: try target("127.0.0.1:7"), chooseProcesses: true,
                                     chooseSources: true, hardLimit: 20_000, ports: ports) == nil)
    }

    @Test("past one source address's ports, a target off loopback is an error that says what to configure",
          arguments: ["192.0.2.1:7", "[::1]:7"])
    func offLoopbackNeedsSources(target text: String) throws {
        #expect(throws: LoadError.self) {
            try ScalePlan.choose(connections: 100_000, target: try target(text), chooseProcesses: true, chooseSources: true,
                                 hardLimit: 20_000, ports: ports)
        }
        let address = try target(text)
        do {
            _ = try ScalePlan.choose(connections: 100_000, target: address, chooseProcesses: true,
                                     chooseSources: true, hardLimit: 20_000, ports: ports)
        } catch {
            #expect(error.description.contains("8 local source addresses") && error.description.contains("--source"), "\(error)")
        }
        // Below one address's share, no source is needed anywhere.
        #expect(try ScalePlan.choose(connections: 12_000, target: try target(text), chooseProcesses: false,
                                     chooseSources: true, hardLimit: 20_000, ports: ports) == nil)
    }
}

@Suite(.serialized) struct AtScale {
    @Test("a hold past one process's descriptors and one address's ports picks processes and sources itself",
          .timeLimit(.minutes(3)))
    func holdChoosesItsOwnProcessesAndSources() throws {
        let ports = try EcholoadRuns.Scale.ephemeralPortCount()
        // Past two source addresses' shares (45 % of the range each) and one process's descriptors.
        let connections = 2 * (ports / 2 - ports / 20) + 1000
        let perProcess = 15_000
        let servers = (connections + perProcess - 1) / perProcess
        let listener = try Socket.listen(on: try SocketAddress(parsing: "127.0.0.1:0"), backlog: 4096)
        let address = try Socket.localAddress(listener.rawValue)!.description
        let echods = try (0..<servers).map { _ in try Echod(activatedWith: listener.rawValue) }
        let run = try echoload(["hold", address, "-c", "\(connections)", "--duration", "1s", "--json", "--drain-timeout", "10s"],
                               timeout: 150)
        try expectConsistent(run, mode: .hold, connections: connections, size: 16)
        let j = try run.json()
        #expect((int(j, "processes") ?? 0) >= 2, "\(run)")
        #expect(int(j, "options.sources") == 3, "\(run)")
        let plan = value(j, "plan")?.stringValue ?? ""
        #expect(plan.contains("processes") && plan.contains("127.0.0.2-127.0.0.4"), "\(plan)")
        #expect(run.stderr.contains("echoload: chose \(connections) connections: "), "\(run.stderr.prefix(500))")
        // Item 6: the connect rate over time adds up to what was established.
        let perSecond = value(j, "connections.established_per_second")?.arrayValue?.compactMap(\.intValue) ?? []
        #expect(perSecond.reduce(0, +) == Int64(connections), "\(perSecond)")
        _ = echods
    }

    /// A server that takes 10 at a time and leaves the rest in its backlog answers late probes with
    /// the slots early ones free once they close: none may close before every probe is resolved.
    @Test("hold: held counts only connections open together, not ones served as others closed",
          arguments: [ClientModel.event, .thread])
    func heldMeansOpenTogether(model: ClientModel) throws {
        let echod = try Echod(server: "MaxConnections=10\n")
        let run = try echoload(["hold", echod.address, "-c", "15", "--duration", "200ms", "--drain-timeout", "2s",
                                "--json", "--quiet", "--model", model.rawValue])
        let j = try run.json()
        #expect(int(j, "connections.held") == 10, "\(run)")
        #expect(int(j, "errors.timeouts") == 5, "\(run)")
        #expect(run.status == 1)
    }

    @Test("a large hold to a target off loopback says what it needs, one line, before connecting")
    func offLoopbackIsExplained() throws {
        let run = try echoload(["hold", "192.0.2.1:7", "-c", "100000"])
        #expect(run.status == 64, "\(run)")
        #expect(run.stderr.split(separator: "\n").count == 1 && run.stderr.contains("local source addresses")
                && run.stderr.contains("--source"), "\(run)")
    }

    @Test("max stops where echod's MaxConnections= stops taking connections")
    func maxFindsTheServersLimit() throws {
        let echod = try Echod(server: "MaxConnections=10\nBacklog=8\n")
        let run = try echoload(["max", echod.address, "--limit", "400", "--connect-timeout", "1s", "--duration", "200ms",
                                "--drain-timeout", "1s", "--json", "--quiet"], timeout: 60)
        #expect(run.status == 0, "\(run)")
        let j = try run.json()
        #expect(value(j, "mode")?.stringValue == "max")
        #expect(int(j, "max.held") == 10, "\(run)")
        #expect(int(j, "connections.held") == 10)
        let stoppedBy = value(j, "max.stopped_by")?.stringValue ?? ""
        #expect(stoppedBy.contains("ETIMEDOUT") || stoppedBy.contains("refused") || stoppedBy.contains("closed")
                || stoppedBy.contains("reset"), "\(stoppedBy)")
        // Established but left in the backlog: open, never answered, not held and not a fault.
        let unanswered = int(j, "max.unanswered") ?? -1
        #expect(unanswered >= 1 && int(j, "connections.established") == 10 + unanswered, "\(run)")
        #expect(int(j, "errors.total") == 0)
        if let problem = try schemaViolation(run.stdout) { Issue.record("schema: \(problem)") }
        let text = try echoload(["max", echod.address, "--limit", "400", "--connect-timeout", "1s", "--duration", "200ms",
                                 "--drain-timeout", "1s", "--quiet"], timeout: 60)
        #expect(text.stdout.contains("max          held 10 ") && text.stdout.contains("stopped by   "), "\(text)")
    }

    @Test("max stops at its own --limit, all held")
    func maxStopsAtTheLimit() throws {
        let echod = try Echod()
        let run = try echoload(["max", echod.address, "--limit", "300", "--duration", "200ms", "--json", "--quiet",
                                "--processes", "2"], timeout: 60)
        #expect(run.status == 0, "\(run)")
        let j = try run.json()
        #expect(int(j, "max.held") == 300, "\(run)")
        #expect(value(j, "max.stopped_by")?.stringValue == "--limit 300 reached: every connection opened", "\(run)")
        #expect(int(j, "max.unanswered") == 0 && int(j, "connections.failed") == 0)
        if let problem = try schemaViolation(run.stdout) { Issue.record("schema: \(problem)") }
    }

    @Test("max: the time-limit guard stops the ramp and says so")
    func maxTimeGuard() throws {
        let echod = try Echod()
        let run = try echoload(["max", echod.address, "--limit", "5000", "--rate", "200/s", "--time-limit", "500ms",
                                "--duration", "100ms", "--json", "--quiet"], timeout: 60)
        #expect(run.status == 0, "\(run)")
        let j = try run.json()
        let held = int(j, "max.held") ?? 0
        #expect(held > 20 && held < 400, "\(run)")
        #expect(value(j, "max.stopped_by")?.stringValue?.contains("--time-limit") == true, "\(run)")
    }
}
