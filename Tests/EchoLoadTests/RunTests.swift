// SPDX-License-Identifier: Apache-2.0
// End-to-end runs of the echoload binary against real echod processes (each concurrency model),
// against deliberately wrong servers, with split processes, and at a scale past one source
// address's ephemeral ports. Loopback only; every run is bounded by its own --duration and
// --drain-timeout and by a kill timeout here.
//
// One serialized suite: the runs measure throughput and hold thousands of sockets, and running
// them side by side on two cores would only make each slower and the whole no faster.
import EchoCore
import EchoLoad
import Glibc
import Testing

/// The modes over TCP (`udp` has its own suite, DatagramRunTests.swift).
let tcpModes = LoadMode.allCases.filter { $0 != .udp }

/// Arguments for a short run of `mode` (about a second).
func shortRun(_ mode: LoadMode, _ target: String, connections: Int? = nil) -> [String] {
    var a = [mode.rawValue, target, "--json", "--quiet", "--drain-timeout", "2s"]
    // Under a sanitizer a fork-model echod's first child takes longer to start than a 200 ms
    // warm-up: the window would see no traffic at all.
    let warmup = sanitizer == nil ? "200ms" : "2s"
    switch mode {
    case .hold: a += ["-c", "\(connections ?? 200)", "--duration", "300ms"]
    case .pingpong: a += ["-c", "\(connections ?? 8)", "--size", "100", "--duration", "500ms", "--warmup", warmup]
    case .rate: a += ["-c", "\(connections ?? 8)", "--rate", "2000/s", "--size", "64", "--duration", "500ms", "--warmup", warmup]
    case .stream: a += ["-c", "\(connections ?? 2)", "--size", "16384", "--duration", "500ms", "--warmup", warmup]
    case .udp: a += ["-c", "\(connections ?? 4)", "--rate", "1000/s", "--size", "64", "--duration", "500ms", "--warmup", warmup]
    }
    return a
}

/// Checks that a clean run's figures agree with each other and with what was asked.
func expectConsistent(_ run: Run, mode: LoadMode, connections: Int, size: Int, rate: Double? = nil,
                      sourceLocation: Testing.SourceLocation = #_sourceLocation) throws {
    #expect(run.status == 0, "\(run)", sourceLocation: sourceLocation)
    let j = try run.json()
    #expect(value(j, "clean") == .bool(true), "\(run)", sourceLocation: sourceLocation)
    #expect(int(j, "errors.total") == 0, sourceLocation: sourceLocation)
    #expect(int(j, "connections.requested") == Int64(connections), sourceLocation: sourceLocation)
    #expect(int(j, "connections.established") == Int64(connections), sourceLocation: sourceLocation)
    #expect(int(j, "connections.failed") == 0, sourceLocation: sourceLocation)
    let parts = value(j, "parts")?.arrayValue ?? []
    #expect(parts.compactMap { int($0, "established") }.reduce(0, +) == Int64(connections), sourceLocation: sourceLocation)
    #expect(int(j, "traffic.total_bytes_sent") == int(j, "traffic.total_bytes_received"), sourceLocation: sourceLocation)
    let messages = int(j, "traffic.messages") ?? -1
    switch mode {
    case .hold:
        #expect(int(j, "connections.held") == Int64(connections), sourceLocation: sourceLocation)
        #expect(parts.compactMap { int($0, "held") }.reduce(0, +) == Int64(connections), sourceLocation: sourceLocation)
        // One 16-byte probe per connection, and nothing else.
        #expect(int(j, "traffic.total_bytes_sent") == Int64(16 * connections), sourceLocation: sourceLocation)
    case .pingpong, .rate, .udp:
        #expect(messages > 0, sourceLocation: sourceLocation)
        #expect(messages * Int64(size) == int(j, "traffic.bytes_received"), sourceLocation: sourceLocation)
        #expect(messages * Int64(size) == int(j, "traffic.bytes_sent"), sourceLocation: sourceLocation)
        #expect(int(j, "latency_us.count") == messages, sourceLocation: sourceLocation)
        #expect(parts.compactMap { int($0, "messages") }.reduce(0, +) == messages, sourceLocation: sourceLocation)
        let l = ["min", "p50", "p90", "p99", "p99_9", "max"].compactMap { value(j, "latency_us.\($0)")?.doubleValue }
        #expect(l.count == 6 && l == l.sorted() && l[0] > 0, "latency percentiles \(l)", sourceLocation: sourceLocation)
        let seconds = value(j, "traffic.measured_seconds")?.doubleValue ?? 0
        let perSecond = value(j, "traffic.messages_per_second")?.doubleValue ?? 0
        #expect(seconds > 0 && abs(perSecond - Double(messages) / seconds) <= 1, sourceLocation: sourceLocation)
        if mode == .udp {
            #expect(int(j, "datagrams.sent") == messages && int(j, "datagrams.echoed") == messages, sourceLocation: sourceLocation)
            #expect(int(j, "datagrams.lost") == 0 && int(j, "datagrams.duplicates") == 0, sourceLocation: sourceLocation)
        }
        if mode == .rate || mode == .udp, let rate {
            // Open loop: everything scheduled was answered, and the schedule kept the rate.
            #expect(int(j, "traffic.scheduled_messages") == messages, sourceLocation: sourceLocation)
            #expect(abs(Double(messages) - rate * seconds) <= Double(connections) + 2, "messages \(messages) at \(rate)/s over \(seconds) s", sourceLocation: sourceLocation)
        }
    case .stream:
        #expect((int(j, "traffic.bytes_sent") ?? 0) > 0, sourceLocation: sourceLocation)
        #expect((int(j, "traffic.bytes_received") ?? 0) > 0, sourceLocation: sourceLocation)
    }
    if let problem = try schemaViolation(run.stdout) {
        Issue.record("--json output does not match docs/echoload.schema.json: \(problem)", sourceLocation: sourceLocation)
    }
}

func size(for mode: LoadMode) -> Int {
    switch mode {
    case .hold: return 16
    case .pingpong: return 100
    case .rate: return 64
    case .stream: return 16384
    case .udp: return 64
    }
}

func defaultConnections(_ mode: LoadMode) -> Int {
    switch mode {
    case .hold: return 200
    case .pingpong, .rate: return 8
    case .stream: return 2
    case .udp: return 4
    }
}

@Suite(.serialized) struct EcholoadRuns {

    @Suite struct AgainstEchod {
        @Test("every subcommand reports consistent figures against echod", arguments: ServerModel.allCases, tcpModes)
        func consistentFigures(server: ServerModel, mode: LoadMode) throws {
            // A model echod's --check-config rejects is a failure, never a skipped case.
            try #require(try Echod.supports(server), "echod --check-config rejects Model=\(server.rawValue)")
            let echod = try Echod(model: server)
            let run = try echoload(shortRun(mode, echod.address))
            try expectConsistent(run, mode: mode, connections: defaultConnections(mode), size: size(for: mode),
                                 rate: mode == .rate ? 2000 : nil)
        }

        @Test("the thread and fork client models report consistent figures",
              arguments: [ClientModel.thread, .fork], tcpModes)
        func clientModels(model: ClientModel, mode: LoadMode) throws {
            let echod = try Echod()
            let connections = model == .fork ? min(defaultConnections(mode), 20) : defaultConnections(mode)
            let run = try echoload(shortRun(mode, echod.address, connections: connections) + ["--model", model.rawValue])
            try expectConsistent(run, mode: mode, connections: connections, size: size(for: mode),
                                 rate: mode == .rate ? 2000 : nil)
            if model == .fork { #expect(try run.json()["processes"]?.intValue == Int64(connections)) }
        }

        @Test("the human table shows the figures") func table() throws {
            let echod = try Echod()
            let run = try echoload(["pingpong", echod.address, "-c", "2", "--duration", "300ms", "--warmup", "100ms"])
            #expect(run.status == 0, "\(run)")
            for word in ["messages × 64 B", "msg/s", "p99.9", "errors       none", "result       clean"] {
                #expect(run.stdout.contains(word), "\(word) missing:\n\(run.stdout)")
            }
            // Not a terminal: plain progress lines, one per second, no carriage returns.
            #expect(!run.stderr.contains("\r"))
        }
    }

    @Suite struct AgainstWrongServers {
        /// Every way an echo can be wrong that echoload promises to catch, against every mode in
        /// every client model: the verification lives in each client model's reader, so each
        /// reader is checked, not just the one a default run uses. In hold, the fault starts
        /// inside the 16-byte probe, the only bytes that mode sends.
        @Test("a wrong echo is reported with a non-zero exit in every mode and client model",
              arguments: [Fault.flipByte, .dropMidMessage, .trailingGarbage, .earlyClose], Self.modesAndModels)
        func wrongEchoIsCaught(fault: Fault, run: ModeAndModel) throws {
            let server = try FaultyServer(fault, offset: run.mode == .hold ? 0 : nil)
            defer { server.stop() }
            var args = shortRun(run.mode, server.address, connections: 2)
            args += ["--drain-timeout", "500ms", "--model", run.model.rawValue]
            let result = try echoload(args, timeout: 30)
            try expectFault(result, fault)
        }

        struct ModeAndModel: Sendable, CustomTestStringConvertible {
            let mode: LoadMode
            let model: ClientModel
            var testDescription: String { "\(mode.rawValue) --model \(model.rawValue)" }
        }

        static let modesAndModels: [ModeAndModel] = tcpModes.flatMap { mode in
            ClientModel.allCases.map { ModeAndModel(mode: mode, model: $0) }
        }

        @Test("a silent server is reported as timeouts", arguments: [LoadMode.pingpong, .rate, .stream], [ClientModel.event, .thread])
        func silentServerIsReported(mode: LoadMode, model: ClientModel) throws {
            let server = try FaultyServer(.silent)
            defer { server.stop() }
            var args = shortRun(mode, server.address, connections: 2)
            args += ["--drain-timeout", "500ms", "--model", model.rawValue]
            let run = try echoload(args, timeout: 30)
            try expectFault(run, .silent)
        }

        @Test("hold against a server that never answers: no connection counts as held")
        func holdSilent() throws {
            let server = try FaultyServer(.silent)
            defer { server.stop() }
            let run = try echoload(shortRun(.hold, server.address, connections: 20) + ["--drain-timeout", "300ms"], timeout: 30)
            try expectFault(run, .silent)
            #expect(try run.json()["connections"]?["held"]?.intValue == 0)
        }

        @Test("a stalled server shows up as latency in rate mode, not as missing messages")
        func noCoordinatedOmission() throws {
            let server = try FaultyServer(.stallOnce)
            defer { server.stop() }
            let run = try echoload(["rate", server.address, "--rate", "1000/s", "-c", "2", "--size", "64",
                                    "--duration", "1s", "--warmup", "0", "--json", "--quiet"], timeout: 30)
            try expectConsistent(run, mode: .rate, connections: 2, size: 64, rate: 1000)
            let j = try run.json()
            // Each connection stalled 300 ms once; the messages due meanwhile waited that long.
            #expect((value(j, "latency_us.max")?.doubleValue ?? 0) >= 250_000, "\(run)")
            #expect((value(j, "latency_us.p99")?.doubleValue ?? 0) >= 100_000, "\(run)")
        }

        func expectFault(_ run: Run, _ fault: Fault, sourceLocation: Testing.SourceLocation = #_sourceLocation) throws {
            #expect(run.status == 1, "\(run)", sourceLocation: sourceLocation)
            let j = try run.json()
            #expect(value(j, "clean") == .bool(false), sourceLocation: sourceLocation)
            let e = { (k: String) in int(j, "errors.\(k)") ?? 0 }
            switch fault {
            case .flipByte: #expect(e("mismatches") > 0, "\(run)", sourceLocation: sourceLocation)
            case .dropMidMessage:
                let io = value(j, "errors.io")?.objectValue?.count ?? 0
                #expect(e("short_reads") + e("premature_closes") + Int64(io) > 0, "\(run)", sourceLocation: sourceLocation)
            case .silent: #expect(e("timeouts") > 0, "\(run)", sourceLocation: sourceLocation)
            case .trailingGarbage: #expect(e("mismatches") > 0, "\(run)", sourceLocation: sourceLocation)
            case .earlyClose:
                let io = value(j, "errors.io")?.objectValue?.count ?? 0
                #expect(e("short_reads") + e("premature_closes") + Int64(io) > 0, "\(run)", sourceLocation: sourceLocation)
            case .replayOld: #expect(e("mismatches") > 0, "\(run)", sourceLocation: sourceLocation)
            case .stallOnce, .none: break
            }
            #expect(value(j, "errors.first")?.stringValue != nil, sourceLocation: sourceLocation)
            // The one-line verdict on stderr names the first fault.
            #expect(run.stderr.contains("echoload: run not clean: connection"), "\(run)", sourceLocation: sourceLocation)
            if let problem = try schemaViolation(run.stdout) {
                Issue.record("schema: \(problem)", sourceLocation: sourceLocation)
            }
        }
    }

    @Suite struct SplitProcesses {
        @Test("--processes: held total is the sum of the parts") func holdMerges() throws {
            let echod = try Echod()
            let run = try echoload(shortRun(.hold, echod.address, connections: 900) + ["--processes", "3"])
            try expectConsistent(run, mode: .hold, connections: 900, size: 16)
            let parts = try run.json()["parts"]?.arrayValue ?? []
            #expect(parts.count == 3)
            #expect(parts.compactMap { int($0, "connections") } == [300, 300, 300])
            #expect(Set(parts.compactMap { int($0, "pid") }).count == 3)
        }

        @Test("--processes: histograms and message counts merge exactly", arguments: [ClientModel.event, .thread])
        func trafficMerges(model: ClientModel) throws {
            let echod = try Echod()
            let run = try echoload(shortRun(.pingpong, echod.address, connections: 4) + ["--processes", "2", "--model", model.rawValue])
            try expectConsistent(run, mode: .pingpong, connections: 4, size: 100)
            #expect(try run.json()["processes"]?.intValue == 2)
        }

        @Test("--processes: rate is split so the total rate holds") func rateMerges() throws {
            let echod = try Echod()
            let run = try echoload(shortRun(.rate, echod.address, connections: 6) + ["--processes", "3"])
            try expectConsistent(run, mode: .rate, connections: 6, size: 64, rate: 2000)
        }
    }

    @Suite struct CommandLine {
        func expectOneLine(_ run: Run, status: Int32, containing text: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) {
            #expect(run.status == status, "\(run)", sourceLocation: sourceLocation)
            let lines = run.stderr.split(separator: "\n")
            #expect(lines.count == 1, "expected one line:\n\(run.stderr)", sourceLocation: sourceLocation)
            #expect(run.stderr.hasPrefix("echoload: ") && run.stderr.contains(text), "\(run)", sourceLocation: sourceLocation)
            #expect(!run.stderr.contains("Fatal error") && !run.stderr.contains("Stack") && !run.stderr.contains("0x"),
                    sourceLocation: sourceLocation)
            #expect(run.stdout.isEmpty, sourceLocation: sourceLocation)
        }

        @Test func badFlagsAreOneLine() throws {
            expectOneLine(try echoload(["pingpong", "127.0.0.1:7", "--bogus"]), status: 64, containing: "--bogus")
            expectOneLine(try echoload(["hold", "nonsense"]), status: 64, containing: "nonsense")
            expectOneLine(try echoload(["hold", "127.0.0.1:7", "--duration", "soon"]), status: 64, containing: "soon")
            expectOneLine(try echoload(["rate", "127.0.0.1:7"]), status: 64, containing: "--rate")
            expectOneLine(try echoload(["hold", "127.0.0.1:7", "-c", "2", "--processes", "3"]), status: 64, containing: "--processes")
            expectOneLine(try echoload(["hold", "127.0.0.1:7", "--source", "127.0.0.9-127.0.0.1"]), status: 64, containing: "--source")
            expectOneLine(try echoload(["pingpong", "127.0.0.1:7", "--model", "fork", "-c", "5000"]), status: 64, containing: "fork")
            expectOneLine(try echoload(["launch", "127.0.0.1:7"]), status: 64, containing: "launch")
        }

        /// Values at the edges of what the arithmetic can hold are refused up front, rather than
        /// trapping on an overflow, hanging, or (timeouts of 0) blocking forever.
        @Test(arguments: [
            (["rate", "127.0.0.1:7", "--rate", "1e-10"], "--rate is too low"),
            (["rate", "127.0.0.1:7", "--rate", "1e300"], "--rate must be at most"),
            (["hold", "127.0.0.1:7", "-c", "9223372036854775807"], "--connections must be at most"),
            (["pingpong", "127.0.0.1:7", "--warmup", "2000000h", "--duration", "2000000h"], "at most 1000h"),
            (["pingpong", "127.0.0.1:7", "--model", "thread", "--drain-timeout", "0"], "--drain-timeout"),
            (["pingpong", "127.0.0.1:7", "--connect-timeout", "500ns"], "--connect-timeout"),
            (["rate", "127.0.0.1:7", "--rate", "10", "--fail-under-rate", "150%"], "--fail-under-rate"),
            (["rate", "127.0.0.1:7", "--rate", "10", "--fail-under-rate", "0"], "--fail-under-rate"),
        ])
        func extremeValuesAreRefusedInOneLine(arguments: [String], message: String) throws {
            expectOneLine(try echoload(arguments), status: 64, containing: message)
        }

        @Test func unreachableTargetIsOneLine() throws {
            // A port that was just free: bind, read it back, close, connect.
            let fd = try Socket.listen(on: try SocketAddress(parsing: "127.0.0.1:0"), backlog: 1)
            let address = try Socket.localAddress(fd.rawValue)!.description
            fd.close()
            expectOneLine(try echoload(["pingpong", address, "-c", "3"]), status: 2, containing: "ECONNREFUSED")
            expectOneLine(try echoload(["hold", "[::1]:\(address.split(separator: ":").last!)", "-c", "3"]), status: 2, containing: "cannot connect")
        }

        @Test func moreConnectionsThanOneProcessMayOpenIsExplained() throws {
            expectOneLine(try echoload(["pingpong", "127.0.0.1:7", "-c", "30000"]), status: 64, containing: "--processes")
        }

        @Test func helpListsTheSubcommandsAndDefaults() throws {
            let run = try echoload(["--help"])
            #expect(run.status == 0)
            for s in ["hold", "pingpong", "rate", "stream"] { #expect(run.stdout.contains(s)) }
            #expect(!run.stdout.contains("_child"))
            let pingpong = try echoload(["pingpong", "--help"])
            #expect(pingpong.stdout.contains("default: 10s") && pingpong.stdout.contains("--warmup"), "\(pingpong)")
        }
    }

    @Suite struct Scale {
        /// More connections to one listening address than one source address has ephemeral
        /// ports for, so echoload must spread them over two source addresses (--source), and
        /// more than one process may hold, so it splits them (--processes); two or more echod
        /// processes share one listening socket (socket activation, the way systemd would pass it).
        ///
        /// The count comes from the host's port range: the range plus 2000, so one source
        /// address cannot hold them all whatever the range (32768–60999 gives 30 232; echod's own
        /// sysctl drop-in, 10000–65535, gives 57 536). Processes and echod instances are sized to
        /// stay under this machine's 20 000 descriptors per process.
        @Test("hold past one source address's ports, with --source and --processes", .timeLimit(.minutes(3)))
        func holdPastOneSourceAddress() throws {
            let ports = try Self.ephemeralPortCount()
            let connections = ports + 2000
            let perProcess = 15_000
            let processes = (connections + perProcess - 1) / perProcess
            let listener = try Socket.listen(on: try SocketAddress(parsing: "127.0.0.1:0"), backlog: 4096)
            let address = try Socket.localAddress(listener.rawValue)!.description
            let servers = try (0..<processes).map { _ in try Echod(activatedWith: listener.rawValue) }
            let run = try echoload(["hold", address, "-c", "\(connections)", "--source", "127.0.0.2-127.0.0.3",
                                    "--processes", "\(processes)", "--duration", "1s", "--json", "--quiet", "--drain-timeout", "10s"],
                                   timeout: 150)
            try expectConsistent(run, mode: .hold, connections: connections, size: 16)
            #expect(try run.json()["options"]?["sources"]?.intValue == 2)
            // The servers' own count: every connection was accepted by one of them.
            let accepted = servers.map { $0.stopAndCountAccepted() }
            #expect(accepted.allSatisfy { $0 != nil }, "an echod did not report its total: \(servers.map(\.child.stderr))")
            #expect(accepted.compactMap { $0 }.reduce(0, +) >= connections, "accepted \(accepted) for \(connections) connections")
        }

        /// Size of /proc/sys/net/ipv4/ip_local_port_range.
        static func ephemeralPortCount() throws -> Int {
            let text = try String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)
            let v = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }
            guard v.count == 2, v[1] >= v[0] else { throw TestError.failed("unreadable ip_local_port_range: \(text)") }
            return v[1] - v[0] + 1
        }
    }
}
