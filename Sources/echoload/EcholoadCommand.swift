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
        abstract: "Load client for RFC 862 echo servers: hold, max, pingpong, rate, stream.",
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
        subcommands: [Hold.self, Max.self, Pingpong.self, Rate.self, Stream.self, Child.self]
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

    /// Sets size, warm-up and the measured period of `o`.
    func apply(to o: inout LoadOptions, duration: DurationArgument) {
        o.size = size
        o.duration = duration.nanoseconds
        o.warmup = warmup.nanoseconds
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

/// One part of a split run, started by the parent echoload (not for people). Its options (JSON)
/// come on stdin.
struct Child: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: ProcessDriver.childCommand, shouldDisplay: false)

    func run() throws {
        Glibc.exit(LoadRunner.runChild(input: 0))
    }
}
