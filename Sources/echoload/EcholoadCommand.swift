// SPDX-License-Identifier: Apache-2.0
// echoload's entry point: flags to `LoadOptions`, then `LoadRunner`. Wiring only; the engine is
// the EchoLoad library.
//
// Exit status: 0 clean run; 1 the run finished but found faults (or fell short: connections not
// established, not held, offered rate under --fail-under-rate); 2 the target could not be reached
// at all; 3 the client itself failed; 64 bad flags (EX_USAGE); 130 / 143 interrupted by SIGINT /
// SIGTERM (the partial result is printed). Errors are one line on stderr, never a stack trace.
import ArgumentParser
import EchoBuildInfo
import EchoCore
import EchoLoad
import Glibc

@main
struct EcholoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echoload",
        abstract: "Load client for RFC 862 echo servers: hold, max, pingpong, rate, stream, udp; sweep, merge.",
        discussion: """
            Every echoed byte is checked against what was sent (a per-connection, position-dependent \
            pattern); any mismatch, short read, premature close or missing echo is counted and makes \
            the exit status non-zero. A progress line goes to stderr each second; the result goes to \
            stdout as a table, or as JSON with --json (schema: docs/echoload.schema.json).
            SIGINT or SIGTERM ends the run early: the partial result is printed (marked interrupted) \
            and the exit status is 128 + the signal (130, 143); a second signal ends it at once.
            Exit status: 0 clean run, 1 faults found, 2 target unreachable, 3 client failure, 64 bad usage, \
            130/143 interrupted.
            """,
        version: BuildInfo.versionText(program: "echoload"),
        subcommands: [Hold.self, Max.self, Pingpong.self, Rate.self, Stream.self, Udp.self, Sweep.self, Merge.self, Child.self]
    )

    /// Parses, runs, and turns every failure into one line and an exit status.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as LoadFailure {
            writeAll(2, e.message + "\n")
            Glibc.exit(e.status)
        } catch {
            if exitCode(for: error) == .success { exit(withError: error) }  // --help, --version
            let message = Self.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            writeAll(2, "echoload: \(message)\n")
            Glibc.exit(64)
        }
    }
}

/// A run that ended with a status other than success (already explained, one line).
struct LoadFailure: Error {
    let message: String
    let status: Int32
}

// MARK: - Argument types

struct DurationArgument: ExpressibleByArgument {
    let nanoseconds: Int64
    init?(argument: String) {
        guard let ns = LoadParsing.duration(argument) else { return nil }
        nanoseconds = ns
    }
    init(seconds: Int64) { nanoseconds = seconds * 1_000_000_000 }
    var defaultValueDescription: String { formatSeconds(nanoseconds) }
}

struct RateArgument: ExpressibleByArgument {
    let perSecond: Double
    init?(argument: String) {
        guard let r = LoadParsing.rate(argument) else { return nil }
        perSecond = r
    }
}

struct FractionArgument: ExpressibleByArgument {
    let value: Double
    init?(argument: String) {
        guard let v = LoadParsing.fraction(argument) else { return nil }
        value = v
    }
}

extension ClientModel: ExpressibleByArgument {}

func formatSeconds(_ ns: Int64) -> String {
    ns % 1_000_000_000 == 0 ? "\(ns / 1_000_000_000)s" : "\(Double(ns) / 1e9)s"
}

// MARK: - Shared options

struct CommonOptions: ParsableArguments {
    @Argument(help: ArgumentHelp("The echo server: HOST:PORT or [IPv6]:PORT; HOST numeric or a name (getaddrinfo: /etc/hosts, DNS).", valueName: "target"))
    var target: String

    @Option(name: .long, help: ArgumentHelp(
        "Local source addresses, used round-robin with IP_BIND_ADDRESS_NO_PORT: an address, an IPv4 range A-B, or a comma-separated list (e.g. 127.0.0.2-127.0.0.250). Each source address adds a full ephemeral port range.",
        valueName: "addresses"))
    var source: String?

    @Option(name: .long, help: "Client model: event (epoll worker threads), thread (one thread per connection), fork (one process per connection, at most 1000).")
    var model: ClientModel = .event

    @Option(name: .long, help: ArgumentHelp("Split the connections across this many processes (past the per-process descriptor ceiling); results merge into one report. hold and max choose it from RLIMIT_NOFILE when not given.", valueName: "P"))
    var processes: Int?

    @Option(name: .long, help: ArgumentHelp("Event-model threads per process (0: one per available CPU).", valueName: "W"))
    var workers: Int = 0

    @Option(name: .customLong("connect-timeout"), help: ArgumentHelp("How long one connect may take before it counts as failed.", valueName: "duration"))
    var connectTimeout = DurationArgument(seconds: 10)

    @Option(name: .customLong("drain-timeout"), help: ArgumentHelp("How long to wait for echoes still owed at the end (and for hold probes) before counting them as timeouts.", valueName: "duration"))
    var drainTimeout = DurationArgument(seconds: 5)

    @Flag(name: .long, help: "Print the result as JSON (docs/echoload.schema.json) instead of a table.")
    var json = false

    @Flag(name: .long, help: "No progress line on stderr.")
    var quiet = false

    @Option(name: .customLong("start-at"), help: ArgumentHelp(
        "Begin traffic (the hold) at this wall-clock time, once every connection is open, so that runs on several hosts measure the same interval (for echoload merge): RFC 3339 (2026-12-02T16:30:00Z) or @UNIX-SECONDS. Within the next 24 hours.",
        valueName: "time"))
    var startAt: String?

    /// Options common to every mode; the subcommand fills in the rest.
    func makeOptions(_ mode: LoadMode, connections: Int) throws -> LoadOptions {
        do {
            var o = LoadOptions(mode: mode, target: try LoadParsing.target(target), connections: connections)
            if let source { o.sources = try LoadParsing.sources(source) }
            o.model = model
            o.processes = processes ?? 1
            o.autoProcesses = processes == nil
            o.autoSources = source == nil
            o.workers = workers
            o.connectTimeout = connectTimeout.nanoseconds
            o.drainTimeout = drainTimeout.nanoseconds
            guard workers >= 0 && workers <= 1024 else { throw LoadError.usage("--workers must be between 0 and 1024") }
            if let startAt {
                guard let wall = WallClock.parse(startAt) else {
                    throw LoadError.usage("--start-at \(startAt): not a time (RFC 3339 such as 2026-12-02T16:30:00Z, or @UNIX-SECONDS)")
                }
                let now = WallClock.now()
                guard wall > now else {
                    throw LoadError.usage("--start-at \(startAt) is in the past (it is now \(WallClock.format(now)))")
                }
                guard wall - now <= 24 * 3600 * 1_000_000_000 else {
                    throw LoadError.usage("--start-at \(startAt) is more than 24 hours away")
                }
                o.startAt = wall
            }
            return o
        } catch let e as LoadError {
            throw LoadFailure(message: e.description.hasPrefix("echoload:") ? e.description : "echoload: \(e)", status: 64)
        }
    }

    /// Runs and reports. Throws `LoadFailure` for anything but a clean run.
    func execute(_ options: LoadOptions) throws {
        let result: LoadResult
        do {
            try options.validate()
            result = try LoadRunner.run(options, progress: .forStderr(quiet: quiet))
        } catch {
            let text = error.description.hasPrefix("echoload:") ? error.description : "echoload: \(error)"
            switch error {
            case .usage: throw LoadFailure(message: text, status: 64)
            case .unreachable: throw LoadFailure(message: text, status: 2)
            case .system: throw LoadFailure(message: text, status: 3)
            }
        }
        if let path = options.latencyLog {
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0, writeAll(fd, result.latencyLog) else {
                let reason = String(cString: strerror(errno))
                if fd >= 0 { closeNoRetry(fd) }
                writeAll(1, (json ? result.json.prettyText : result.table) + "\n")
                throw LoadFailure(message: "echoload: cannot write --latency-log \(path): \(reason)", status: 3)
            }
            closeNoRetry(fd)
        }
        writeAll(1, (json ? result.json.prettyText : result.table) + "\n")
        if let i = result.interruption {
            throw LoadFailure(message: "echoload: interrupted by \(i); the result above is partial", status: result.exitStatus)
        }
        if !result.isClean {
            // The first fault first (the one line people act on), then every reason.
            var why = result.uncleanReasons.joined(separator: "; ")
            if let first = result.tally.firstFault { why = "\(first) (\(why))" }
            throw LoadFailure(message: "echoload: run not clean: \(why)", status: result.exitStatus)
        }
    }
}

// MARK: - Per-subcommand option groups

/// What differs between the subcommands' shared options: defaults and wording.
protocol WorkloadDefaults {
    static var connections: Int { get }
    static var connectionsHelp: String { get }
    static var durationHelp: String { get }
    /// Message (or write) size; unused by `hold`.
    static var size: Int { get }
    static var sizeHelp: String { get }
}

extension WorkloadDefaults {
    static var durationHelp: String { "Measured period (10, 10s, 500ms, 2m)." }
    static var size: Int { 64 }
    static var sizeHelp: String { "Message size in bytes." }
}

/// `--connections` and `--duration`, with the subcommand's defaults.
struct WorkloadOptions<D: WorkloadDefaults>: ParsableArguments {
    @Option(name: [.short, .long], help: ArgumentHelp(D.connectionsHelp))
    var connections: Int = D.connections

    @Option(name: .long, help: ArgumentHelp(D.durationHelp, valueName: "duration"))
    var duration = DurationArgument(seconds: 10)
}

/// `--size` and `--warmup`, for the subcommands that send traffic.
struct TrafficOptions<D: WorkloadDefaults>: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(D.sizeHelp, valueName: "bytes"))
    var size: Int = D.size

    @Option(name: .long, help: ArgumentHelp("Traffic before measuring, excluded from every figure.", valueName: "duration"))
    var warmup = DurationArgument(seconds: 1)

    @Option(name: .long, help: ArgumentHelp(
        "Also report the measured period in intervals of this length (--json: rate, bytes, faults, closed connections, p50/p99/max latency per interval).",
        valueName: "duration"))
    var interval: DurationArgument?

    @Option(name: .customLong("latency-log"), help: ArgumentHelp(
        "Write the per-interval latency histograms (--interval, default 1s) to this file as an HdrHistogram interval log (pingpong, rate).",
        valueName: "file"))
    var latencyLog: String?

    /// Sets size, warm-up and the measured period of `o`.
    func apply(to o: inout LoadOptions, duration: DurationArgument) {
        o.size = size
        o.duration = duration.nanoseconds
        o.warmup = warmup.nanoseconds
        o.intervalLength = interval?.nanoseconds ?? (latencyLog != nil ? 1_000_000_000 : 0)
        o.latencyLog = latencyLog
    }
}

// MARK: - Subcommands

struct Hold: ParsableCommand, WorkloadDefaults {
    static let configuration = CommandConfiguration(
        abstract: "Open N idle connections, hold them, then check each still echoes.",
        discussion: """
            Opens --connections connections (at most --rate new ones per second), reports how many \
            were established, how many failed (by errno) and how long that took; once every connect \
            (of every process) has resolved, holds them for --duration, all open at once; then sends \
            one 16-byte probe on each and expects its echo; an answered connection stays open until \
            every probe is resolved, so the held ones were all open and answering at one instant. \
            Clean only if every connection was established and answered its probe. Past one \
            process's descriptor ceiling (RLIMIT_NOFILE) or 45% of the ephemeral port range, and \
            unless --processes or --source say otherwise, it chooses the processes and (on \
            loopback) source addresses in 127.0.0.0/8 itself and says what it chose.
            """)
    static let connections = 100
    static let connectionsHelp = "Connections to open."
    static let durationHelp = "How long to hold the connections (10, 10s, 500ms, 2m)."

    @OptionGroup var common: CommonOptions
    @OptionGroup var workload: WorkloadOptions<Hold>

    @Option(name: .long, help: ArgumentHelp("Most new connections per second (N or N/s; default: as fast as they complete).", valueName: "rate"))
    var rate: RateArgument?

    func run() throws {
        var o = try common.makeOptions(.hold, connections: workload.connections)
        o.rate = rate?.perSecond
        o.duration = workload.duration.nanoseconds
        o.warmup = 0
        try common.execute(o)
    }
}

struct Max: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open idle connections until the server stops taking them; report the most held at once.",
        discussion: """
            Opens connections (at most --rate new ones per second) until the server stops taking \
            them (a refused, timed-out or reset connect, or an open idle connection closed or reset \
            by the server) or a client guard trips (--limit connections opened, MemAvailable under \
            --memory-floor, --time-limit); then, like hold, waits until every connect of every \
            process resolved, holds them for --duration, and sends one 16-byte probe on each. A \
            connection counts as held if it answers while every other held one stays open (none is \
            closed before every probe is resolved), so the figure is the most connections the \
            server served at one instant; established connections it left in its backlog are \
            reported as unanswered. Reports the maximum held, what stopped the ramp, and the \
            connects per second as the ramp went on. Processes and source addresses are chosen \
            as for hold from --limit. Event client model only.
            """)

    @OptionGroup var common: CommonOptions

    @Option(name: .long, help: ArgumentHelp("Most connections to open (the client-side count guard).", valueName: "N"))
    var limit: Int = 1_000_000

    @Option(name: .long, help: ArgumentHelp("How long to hold the connections once the ramp stopped (10, 10s, 500ms, 2m).", valueName: "duration"))
    var duration = DurationArgument(seconds: 1)

    @Option(name: .long, help: ArgumentHelp("Most new connections per second (N or N/s; default: as fast as they complete).", valueName: "rate"))
    var rate: RateArgument?

    @Option(name: .customLong("memory-floor"), help: ArgumentHelp("Stop the ramp when MemAvailable (/proc/meminfo) falls below this many MiB.", valueName: "MiB"))
    var memoryFloor: Int = 1024

    @Option(name: .customLong("time-limit"), help: ArgumentHelp("Stop the ramp after this long (10, 10s, 2m, 1h).", valueName: "duration"))
    var timeLimit = DurationArgument(seconds: 600)

    func run() throws {
        var o = try common.makeOptions(.hold, connections: limit)
        guard memoryFloor >= 0 && memoryFloor <= 1 << 30 else {
            throw LoadFailure(message: "echoload: --memory-floor must be between 0 and \(1 << 30) MiB", status: 64)
        }
        guard timeLimit.nanoseconds >= 1_000_000 && timeLimit.nanoseconds <= LoadOptions.maxSpan else {
            throw LoadFailure(message: "echoload: --time-limit must be between 1ms and 1000h", status: 64)
        }
        o.ramp = RampLimits(memoryFloor: Int64(memoryFloor) << 20, timeLimit: timeLimit.nanoseconds)
        o.rate = rate?.perSecond
        o.duration = duration.nanoseconds
        o.warmup = 0
        try common.execute(o)
    }
}

struct Pingpong: ParsableCommand, WorkloadDefaults {
    static let configuration = CommandConfiguration(
        abstract: "Closed loop: each connection sends a message and waits for its whole echo.",
        discussion: """
            Reports messages/s, MB/s (payload, one direction, 1 MB = 10^6 bytes) and round-trip \
            latency percentiles (HdrHistogram, 3 significant digits), warm-up excluded.
            """)
    static let connections = 1
    static let connectionsHelp = "Connections, each with one message in flight."

    @OptionGroup var common: CommonOptions
    @OptionGroup var workload: WorkloadOptions<Pingpong>
    @OptionGroup var traffic: TrafficOptions<Pingpong>

    func run() throws {
        var o = try common.makeOptions(.pingpong, connections: workload.connections)
        traffic.apply(to: &o, duration: workload.duration)
        try common.execute(o)
    }
}

struct Rate: ParsableCommand, WorkloadDefaults {
    static let configuration = CommandConfiguration(
        abstract: "Open loop at a constant message rate, latency from intended send times.",
        discussion: """
            Messages are scheduled at a fixed rate spread over the connections, whether or not \
            earlier echoes came back: one schedule for the whole run (message m of connection g of \
            N is due at start + (m×N+g)/rate), shared by every worker thread and process. The offered \
            rate (messages handed to the sockets in the measured period) is reported; \
            --fail-under-rate makes a shortfall fail the run. Latency counts from each message's intended send time, so a \
            stalled server shows up as latency (no coordinated omission). Messages still unanswered \
            --drain-timeout after the period are counted as timeouts.
            """)
    static let connections = 10
    static let connectionsHelp = "Connections the messages are spread over."

    @OptionGroup var common: CommonOptions

    @Option(name: .long, help: ArgumentHelp("Messages per second over all connections (N or N/s).", valueName: "rate"))
    var rate: RateArgument

    @Option(name: .customLong("fail-under-rate"), help: ArgumentHelp(
        "Fail the run (exit 1) if the offered rate (messages handed to the sockets in the measured period) falls below this fraction of --rate (0.95 or 95%).",
        valueName: "fraction"))
    var failUnderRate: FractionArgument?

    @OptionGroup var workload: WorkloadOptions<Rate>
    @OptionGroup var traffic: TrafficOptions<Rate>

    func run() throws {
        var o = try common.makeOptions(.rate, connections: workload.connections)
        o.rate = rate.perSecond
        o.failUnderRate = failUnderRate?.value
        traffic.apply(to: &o, duration: workload.duration)
        try common.execute(o)
    }
}

struct Stream: ParsableCommand, WorkloadDefaults {
    static let configuration = CommandConfiguration(
        abstract: "Each connection writes continuously and reads concurrently.",
        discussion: """
            Reports MB/s written and MB/s echoed back in the measured period. At the end each \
            connection shuts down its write side and must get every byte back.
            """)
    static let connections = 1
    static let connectionsHelp = "Connections."
    static let size = 65536
    static let sizeHelp = "Bytes per write."

    @OptionGroup var common: CommonOptions
    @OptionGroup var workload: WorkloadOptions<Stream>
    @OptionGroup var traffic: TrafficOptions<Stream>

    func run() throws {
        var o = try common.makeOptions(.stream, connections: workload.connections)
        traffic.apply(to: &o, duration: workload.duration)
        try common.execute(o)
    }
}

struct Sweep: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ping-pong over a grid of message sizes and connection counts, plus a stream point.",
        discussion: """
            Every point runs --repeat times, each after a warm-up, every byte verified; the table \
            gives medians (messages/s, echoed MB/s, p50 and p99 round-trip latency). With \
            --baseline, a second server is measured at every point too, alternately with the target \
            (which goes first alternates), and each point gets the ratio of the medians. Exit status: \
            0 when every run was clean, 1 otherwise.
            """)

    @OptionGroup var common: CommonOptions

    @Option(name: .long, help: ArgumentHelp("Comma-separated message sizes in bytes (empty: no ping-pong points).", valueName: "list"))
    var sizes = "64,512,4096,65536"

    @Option(name: [.short, .long], help: ArgumentHelp("Comma-separated connection counts.", valueName: "list"))
    var connections = "1,10,100"

    @Option(name: .customLong("stream-connections"), help: ArgumentHelp("Connections of the stream point (0: no stream point).", valueName: "n"))
    var streamConnections = 10

    @Option(name: .customLong("stream-size"), help: ArgumentHelp("Bytes per write of the stream point.", valueName: "bytes"))
    var streamSize = 65536

    @Option(name: .long, help: ArgumentHelp("Measured period of each run.", valueName: "duration"))
    var duration = DurationArgument(seconds: 3)

    @Option(name: .long, help: ArgumentHelp("Traffic before each run's measured period.", valueName: "duration"))
    var warmup = DurationArgument(seconds: 1)

    @Option(name: .customLong("repeat"), help: ArgumentHelp("Runs per point and server; medians are reported.", valueName: "n"))
    var repeats = 3

    @Option(name: .long, help: ArgumentHelp("A second server (HOST:PORT) measured alternately at every point; figures also as ratios to it.", valueName: "target"))
    var baseline: String?

    @Option(name: .long, help: ArgumentHelp("Write an SVG chart of the medians to this file.", valueName: "file"))
    var chart: String?

    func run() throws {
        let plan: SweepPlan
        do {
            func list(_ text: String, _ flag: String) throws(LoadError) -> [Int] {
                if text.isEmpty { return [] }
                var out: [Int] = []
                for part in text.split(separator: ",", omittingEmptySubsequences: false) {
                    guard let v = Int(part.filter { $0 != " " }), v >= 1 else { throw .usage("--\(flag) \(text): not a comma-separated list of positive numbers") }
                    out.append(v)
                }
                return out
            }
            guard common.startAt == nil else { throw LoadError.usage("--start-at applies to one run, not to a sweep") }
            let template = try common.makeOptions(.pingpong, connections: 1)
            var p = SweepPlan(target: template.target, template: template)
            p.sizes = try list(sizes, "sizes")
            p.connections = try list(connections, "connections")
            guard streamConnections >= 0 else { throw LoadError.usage("--stream-connections must not be negative") }
            p.stream = streamConnections == 0 ? nil : (streamConnections, streamSize)
            p.duration = duration.nanoseconds
            p.warmup = warmup.nanoseconds
            p.repeats = repeats
            if let baseline { p.baseline = try LoadParsing.target(baseline) }
            try p.validate()
            plan = p
        } catch let e as LoadError {
            throw LoadFailure(message: e.description.hasPrefix("echoload") ? e.description : "echoload: \(e)", status: 64)
        }
        let rows: [SweepRow]
        do {
            rows = try EchoLoad.Sweep.run(plan) { line in if !common.quiet { writeAll(2, line + "\n") } }
        } catch {
            let text = error.description.hasPrefix("echoload") ? error.description : "echoload: \(error)"
            switch error {
            case .usage: throw LoadFailure(message: text, status: 64)
            case .unreachable: throw LoadFailure(message: text, status: 2)
            case .system: throw LoadFailure(message: text, status: 3)
            }
        }
        if let chart {
            let svg = EchoLoad.Sweep.chart(plan, rows)
            let fd = open(chart, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0, writeAll(fd, svg) else {
                throw LoadFailure(message: "echoload sweep: cannot write --chart \(chart): \(String(cString: strerror(errno)))", status: 3)
            }
            closeNoRetry(fd)
        }
        writeAll(1, (common.json ? EchoLoad.Sweep.json(plan, rows).prettyText : EchoLoad.Sweep.table(plan, rows)) + "\n")
        guard rows.allSatisfy(\.clean) else {
            throw LoadFailure(message: "echoload sweep: faults found (see the points marked NOT CLEAN)", status: 1)
        }
    }
}

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge the --json results of runs made on several hosts into one report.",
        discussion: """
            Counts and latency histograms add exactly (each result carries them in its "exact" \
            member); rates are taken over the union of the measured windows, aligned by their \
            wall-clock start (start the runs together with --start-at; the report gives how far \
            apart the windows began). The runs must be of one workload (mode and message size). \
            Exit status: 0 if the merged result is clean, 1 if not, 64 for an unreadable or foreign file.
            """)

    @Argument(help: ArgumentHelp("Results written by echoload ... --json ('-': standard input).", valueName: "result.json"))
    var files: [String]

    @Flag(name: .long, help: "Print the merged result as JSON (docs/echoload.schema.json) instead of a table.")
    var json = false

    func run() throws {
        guard !files.isEmpty else { throw LoadFailure(message: "echoload merge: give the results to merge", status: 64) }
        let result: LoadResult
        do {
            result = try RunMerge.merge(try files.map { (f) throws(LoadError) in try RunMerge.read(f) })
        } catch {
            throw LoadFailure(message: error.description, status: 64)
        }
        writeAll(1, (json ? result.json.prettyText : result.table) + "\n")
        if !result.isClean {
            throw LoadFailure(message: "echoload merge: the merged result is not clean", status: 1)
        }
    }
}

struct Udp: ParsableCommand, WorkloadDefaults {
    static let configuration = CommandConfiguration(
        abstract: "Open loop of UDP datagrams at a constant rate, every echo verified.",
        discussion: """
            Sends --rate datagrams per second of --size bytes, spread over -c connected UDP sockets \
            (one schedule, as in rate), from one thread with sendmmsg/recvmmsg batches. Each datagram \
            carries its socket and sequence number and a pattern keyed by both: an echo of the wrong \
            length, socket or content is a mismatch, one echoed twice a duplicate (both faults); \
            echoes overtaking earlier ones are counted as reordered; datagrams of the measured \
            period not back within --drain-timeout are lost, and more than --max-loss of them fails \
            the run. Latency counts from each datagram's intended send time. --model and \
            --processes do not apply.
            """)
    static let connections = 1
    static let connectionsHelp = "UDP sockets the datagrams are spread over."
    static let sizeHelp = "Datagram size in bytes, 16 to 65507."

    @OptionGroup var common: CommonOptions

    @Option(name: .long, help: ArgumentHelp("Datagrams per second over all sockets (N or N/s).", valueName: "rate"))
    var rate: RateArgument

    @Option(name: .customLong("max-loss"), help: ArgumentHelp(
        "Fail the run (exit 1) if more than this fraction of the datagrams sent in the measured period is lost (0.01 or 1%; default 0).",
        valueName: "fraction"))
    var maxLoss: FractionArgument?

    @OptionGroup var workload: WorkloadOptions<Udp>
    @OptionGroup var traffic: TrafficOptions<Udp>

    func run() throws {
        var o = try common.makeOptions(.udp, connections: workload.connections)
        o.rate = rate.perSecond
        o.maxLoss = maxLoss?.value ?? 0
        traffic.apply(to: &o, duration: workload.duration)
        try common.execute(o)
    }
}

/// One part of a split run, started by the parent echoload (not for people). Its options (JSON)
/// come on stdin.
struct Child: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: ProcessDriver.childCommand, shouldDisplay: false)

    func run() throws {
        Glibc.exit(LoadRunner.runChild(input: 0))
    }
}
