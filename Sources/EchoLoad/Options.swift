// SPDX-License-Identifier: Apache-2.0
// What a run does: the value type both drivers and the command line share, and the parsers for
// the textual forms the command line accepts (`10s`, `1000/s`, `127.0.0.2-127.0.0.250`).
import CEchoShims
import EchoCore
import Glibc

/// The five workloads.
public enum LoadMode: String, Sendable, CaseIterable {
    /// Open idle connections, hold them, probe each once.
    case hold
    /// Closed loop: send a message, wait for its whole echo, repeat.
    case pingpong
    /// Open loop at a constant message rate, latency from each message's intended send time.
    case rate
    /// Write continuously and read concurrently.
    case stream
    /// Open loop of UDP datagrams at a constant rate, each echo verified (loss, duplication,
    /// reordering), latency from intended send times.
    case udp
}

/// How the client itself is built (the three models of the classic study).
public enum ClientModel: String, Sendable, CaseIterable {
    /// A few threads, each with its own epoll instance and many non-blocking connections.
    case event
    /// One thread per connection (two for `rate` and `stream`: a writer and a reader), blocking I/O.
    case thread
    /// One process per connection, each with blocking I/O.
    case fork
}

/// One run's settings. Durations are nanoseconds of CLOCK_MONOTONIC.
public struct LoadOptions: Sendable, Equatable {
    public var mode: LoadMode
    /// The echo server, `HOST:PORT` or `[IPv6]:PORT`.
    public var target: SocketAddress
    /// Connections to open (this process's share, in a child).
    public var connections: Int
    /// Message size in bytes (`pingpong`, `rate`), or write size (`stream`). Default 64.
    public var size: Int = 64
    /// `hold`: most new connections per second (nil: as fast as they complete).
    /// `rate`: messages per second over all connections (required).
    public var rate: Double?
    /// How long to hold (`hold`) or measure (the others). Default 10 s.
    public var duration: Int64 = 10_000_000_000
    /// Traffic before measuring starts, excluded from every figure. Default 1 s (0 for `hold`).
    public var warmup: Int64 = 1_000_000_000
    /// Local source addresses, used round-robin (empty: let the kernel choose).
    public var sources: [SocketAddress] = []
    public var model: ClientModel = .event
    /// Processes to split the connections across (1: this process does the work itself).
    public var processes: Int = 1
    /// Event-model threads (0: one per available CPU).
    public var workers: Int = 0
    /// How long one connect may take before it counts as failed (ETIMEDOUT). Default 10 s.
    public var connectTimeout: Int64 = 10_000_000_000
    /// How long to wait, after the measured period, for echoes still owed (and for hold probes).
    /// Default 5 s.
    public var drainTimeout: Int64 = 5_000_000_000
    /// Global index of this process's first connection (children of a split run).
    public var connectionIndexBase: Int = 0
    /// Most connects in flight per event worker (keeps the server's accept backlog from overflowing).
    public var connectConcurrency: Int = 256
    /// Connections of the whole run (a child's `connections` is its share): the global
    /// schedules (connects in `hold --rate`, messages in `rate`) are laid out over all of them.
    public var totalConnections: Int
    /// `rate`: the run fails (not clean) when the offered rate falls below this fraction of
    /// `rate` (nil: never; a shortfall is reported all the same).
    public var failUnderRate: Double?
    /// hold: choose the processes from the descriptor ceiling (`--processes` not given).
    public var autoProcesses = false
    /// hold: choose source addresses from the ephemeral port range (`--source` not given).
    public var autoSources = false
    /// What `ScalePlan` chose, for the report (nil: nothing was chosen).
    public var plan: String?
    /// `max`: a hold whose connect ramp stops at the server's first refusal (any failed connect,
    /// or an open connection closed by the server) or at a client-side guard; nil for `hold`.
    public var ramp: RampLimits?
    /// `--start-at`: wall-clock time (nanoseconds since the epoch) at which traffic (or the
    /// hold) begins, once every connection is open, so that runs on several hosts measure the
    /// same interval; nil: as soon as every connection is open.
    public var startAt: Int64?
    /// `--interval` (or 1 s for `--latency-log`): length of the intervals the measured window is
    /// reported in, nanoseconds; 0: no per-interval figures.
    public var intervalLength: Int64 = 0
    /// `--latency-log`: where the per-interval latency histograms go (this process only).
    public var latencyLog: String?
    /// `udp`: the run fails when more than this fraction of the datagrams sent in the measured
    /// period never came back (default 0: any loss fails it).
    public var maxLoss: Double = 0

    public init(mode: LoadMode, target: SocketAddress, connections: Int) {
        self.mode = mode
        self.target = target
        self.connections = connections
        self.totalConnections = connections
        if mode == .hold { warmup = 0 }
    }

    /// Event-model worker threads actually used.
    public var effectiveWorkers: Int {
        let w = workers > 0 ? workers : Int(max(1, CEchoShims_available_cpus()))
        return max(1, min(w, connections))
    }

    /// Checks combinations the command line cannot express as types.
    /// - Throws: `LoadError.usage` with one line to show.
    public func validate() throws(LoadError) {
        guard connections >= 1 else { throw .usage("--connections must be at least 1") }
        // Upper bounds keep every derived figure (ranks, deadlines, intervals) inside Int64.
        guard connections <= Self.maxConnections else {
            throw .usage("--connections must be at most \(Self.maxConnections)")
        }
        guard duration <= Self.maxSpan, warmup <= Self.maxSpan, duration + warmup <= Self.maxSpan else {
            throw .usage("--duration plus --warmup must be at most 1000h")
        }
        guard connectTimeout >= 1_000_000 && connectTimeout <= Self.maxSpan else {
            throw .usage("--connect-timeout must be between 1ms and 1000h")
        }
        guard drainTimeout >= 1_000_000 && drainTimeout <= Self.maxSpan else {
            throw .usage("--drain-timeout must be between 1ms and 1000h")
        }
        guard size >= 1 && size <= 64 << 20 else { throw .usage("--size must be between 1 and 67108864 bytes") }
        guard duration >= 0 else { throw .usage("--duration must not be negative") }
        guard warmup >= 0 else { throw .usage("--warmup must not be negative") }
        guard processes >= 1 && processes <= 1024 else { throw .usage("--processes must be between 1 and 1024") }
        guard processes <= connections else { throw .usage("--processes (\(processes)) exceeds --connections (\(connections))") }
        if let rate {
            guard rate > 0 && rate.isFinite else { throw .usage("--rate must be positive") }
            // At most one message (or connect) per nanosecond, and at least one per 1000 hours
            // per connection, so that intervals are whole, positive nanosecond counts.
            guard rate <= 1e9 else { throw .usage("--rate must be at most 1000000000/s") }
            guard 1e9 * Double(connections) / rate <= Double(Self.maxSpan) else {
                throw .usage("--rate is too low: one message per connection must be due within 1000h")
            }
        }
        if mode == .rate && rate == nil { throw .usage("rate needs --rate MESSAGES/s") }
        guard intervalLength == 0 || (intervalLength >= 10_000_000 && intervalLength <= Self.maxSpan) else {
            throw .usage("--interval must be between 10ms and 1000h")
        }
        if intervalLength > 0 && (mode == .hold || mode == .udp) {
            throw .usage("--interval and --latency-log apply to pingpong, rate and stream")
        }
        if latencyLog != nil && mode != .pingpong && mode != .rate {
            throw .usage("--latency-log applies to pingpong and rate (stream measures no latency)")
        }
        if intervalLength > 0 && duration / intervalLength > 100_000 {
            throw .usage("--interval: at most 100000 intervals per run (--duration / --interval)")
        }
        if mode == .udp {
            guard rate != nil else { throw .usage("udp needs --rate DATAGRAMS/s") }
            guard size >= DatagramDriver.headerSize && size <= 65_507 else {
                throw .usage("udp: --size must be between \(DatagramDriver.headerSize) (each datagram carries its socket and sequence number) and 65507 bytes")
            }
            guard model == .event && processes == 1 else {
                throw .usage("udp runs in one thread of one process: drop --model and --processes")
            }
            guard connections <= 4096 else { throw .usage("udp: at most 4096 sockets (-c)") }
        }
        guard maxLoss >= 0 && maxLoss <= 1 else { throw .usage("--max-loss must be a fraction in [0, 1] or a percentage in [0%, 100%]") }
        if let f = failUnderRate {
            guard f > 0 && f <= 1 else { throw .usage("--fail-under-rate must be a fraction in (0, 1] or a percentage in (0%, 100%]") }
            guard mode == .rate else { throw .usage("--fail-under-rate applies to rate mode only") }
        }
        if model == .fork && connections > Self.forkConnectionLimit {
            throw .usage("--model fork starts one process per connection; at most \(Self.forkConnectionLimit) (use --model event --processes P for more)")
        }
        if ramp != nil && model != .event { throw .usage("max uses the event client model (with --processes past one process's descriptors)") }
        if model == .fork && processes > 1 { throw .usage("--model fork already uses one process per connection; drop --processes") }
        for s in sources where s.family != target.family {
            throw .usage("--source \(s.host) is not of the target's address family")
        }
    }

    /// Most connections one run accepts (far beyond what descriptor limits allow anyway).
    public static let maxConnections = 100_000_000

    /// The longest duration, warm-up or timeout (1000 hours, in nanoseconds).
    public static let maxSpan: Int64 = 1000 * 3600 * 1_000_000_000

    /// Most connections `--model fork` accepts (each is a whole process).
    public static let forkConnectionLimit = 1000
}

/// The client-side guards of `max`'s connect ramp (the count guard is `connections`, `--limit`).
public struct RampLimits: Sendable, Equatable {
    /// Stop connecting once /proc/meminfo's MemAvailable falls below this many bytes.
    public var memoryFloor: Int64
    /// Stop connecting this many nanoseconds after the start.
    public var timeLimit: Int64

    public init(memoryFloor: Int64, timeLimit: Int64) {
        self.memoryFloor = memoryFloor
        self.timeLimit = timeLimit
    }
}

/// Checks `RampLimits` (a few times a second, by the process that started the run).
struct RampGuard {
    let limits: RampLimits
    let started: Int64

    /// - Returns: the time and reason the ramp must stop, or nil to go on.
    func check(now: Int64) -> (at: Int64, reason: String)? {
        if now - started >= limits.timeLimit {
            return (now, "client guard: the time limit (--time-limit \(limits.timeLimit / 1_000_000_000)s) ran out")
        }
        if let available = Self.memAvailable(), available < limits.memoryFloor {
            return (now, "client guard: MemAvailable \(available >> 20) MiB fell under --memory-floor \(limits.memoryFloor >> 20) MiB")
        }
        return nil
    }

    /// /proc/meminfo's MemAvailable in bytes.
    static func memAvailable() -> Int64? {
        guard let text = readSmallFile("/proc/meminfo") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let kib = line.split(separator: " ").dropFirst().first.flatMap { Int64($0) }
            return kib.map { $0 * 1024 }
        }
        return nil
    }
}

/// Errors that end a run before it produces a result. Each has one line to show.
public enum LoadError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Bad flags or flag combinations.
    case usage(String)
    /// The target could not be reached at all.
    case unreachable(String)
    /// The client itself failed (out of threads, cannot spawn a process, ...).
    case system(String)

    public var description: String {
        switch self {
        case .usage(let s), .unreachable(let s), .system(let s): return s
        }
    }
}

/// Parsers for the command line's textual forms.
public enum LoadParsing {
    /// `10`, `10s`, `1.5s`, `500ms`, `2m` → nanoseconds.
    public static func duration(_ text: String) -> Int64? {
        let units: [(String, Double)] = [("ms", 1e6), ("us", 1e3), ("ns", 1), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
        var number = Substring(text)
        var scale = 1e9
        for (suffix, s) in units where text.hasSuffix(suffix) {
            number = text.dropLast(suffix.count)
            scale = s
            break
        }
        guard let v = Double(number), v.isFinite, v >= 0 else { return nil }
        let ns = v * scale
        guard ns < 9e18 else { return nil }
        return Int64(ns.rounded())
    }

    /// `0.95` or `95%` → 0.95.
    public static func fraction(_ text: String) -> Double? {
        let percent = text.hasSuffix("%")
        guard let v = Double(percent ? String(text.dropLast()) : text), v.isFinite else { return nil }
        return percent ? v / 100 : v
    }

    /// `1000`, `1000/s`, `1e4/s`, `60/m` → per second.
    public static func rate(_ text: String) -> Double? {
        var number = Substring(text)
        var per = 1.0
        if text.hasSuffix("/s") {
            number = text.dropLast(2)
        } else if text.hasSuffix("/m") {
            number = text.dropLast(2)
            per = 60
        }
        guard let v = Double(number), v.isFinite, v > 0 else { return nil }
        return v / per
    }

    /// Most source addresses one run takes (65536 addresses of about 28,000 ports each are far
    /// more connections than any host holds).
    public static let maxSources = 65_536

    /// `127.0.0.2`, `127.0.0.2-127.0.0.250`, comma-separated lists of either, `::1` → addresses
    /// with port 0. IPv4 ranges only (IPv6 addresses are listed one by one).
    public static func sources(_ text: String) throws(LoadError) -> [SocketAddress] {
        var out: [SocketAddress] = []
        for part in text.split(separator: ",") {
            let bounds = part.split(separator: "-", maxSplits: 1).map(String.init)
            if bounds.count == 2 {
                guard let lo = ipv4(bounds[0]), let hi = ipv4(bounds[1]), lo <= hi else {
                    throw .usage("--source: invalid IPv4 range '\(part)'")
                }
                guard hi - lo < 65536 else { throw .usage("--source: range '\(part)' has more than 65536 addresses") }
                for v in lo...hi {
                    let text = "\(v >> 24).\(v >> 16 & 255).\(v >> 8 & 255).\(v & 255):0"
                    out.append(try parseAddress(text, flag: "--source"))
                }
            } else {
                let host = String(part)
                let text = host.contains(":") ? "[\(host)]:0" : "\(host):0"
                out.append(try parseAddress(text, flag: "--source"))
            }
        }
        guard !out.isEmpty else { throw .usage("--source: no address given") }
        guard out.count <= maxSources else {
            throw .usage("--source: \(out.count) addresses; at most \(maxSources) (each adds a whole ephemeral port range)")
        }
        return out
    }

    /// `HOST:PORT` or `[IPv6]:PORT`. HOST is a numeric address or a name resolved with
    /// getaddrinfo(3) (/etc/hosts, then DNS as nsswitch.conf says); of a name's addresses the first
    /// IPv4 one is used, else the first IPv6 one.
    public static func target(_ text: String) throws(LoadError) -> SocketAddress {
        let address: SocketAddress
        if let numeric = try? SocketAddress(parsing: text) {
            address = numeric
        } else {
            guard let colon = text.lastIndex(of: ":"), colon != text.startIndex else {
                throw .usage("TARGET '\(text)' must be HOST:PORT or [IPv6]:PORT")
            }
            let host = String(text[..<colon])
            guard let port = UInt16(text[text.index(after: colon)...]) else {
                throw .usage("TARGET '\(text)': the port must be a number from 1 to 65535")
            }
            if host.contains(":") || host.hasPrefix("[") {
                // An IPv6 literal that did not parse: its own reason says why.
                return try parseAddress(text, flag: "TARGET")
            }
            address = try resolve(host, port: port, flag: "TARGET")
        }
        guard address.port != 0 else { throw .usage("TARGET '\(text)' needs a port other than 0") }
        return address
    }

    /// Resolves `host` with getaddrinfo(3) for a TCP connection to `port`.
    /// - Throws: `LoadError.usage` naming the host and getaddrinfo's reason.
    static func resolve(_ host: String, port: UInt16, flag: String) throws(LoadError) -> SocketAddress {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0 else {
            throw .usage("\(flag): cannot resolve '\(host)': \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var candidates: [SocketAddress] = []
        var node = list
        while let n = node {
            if let sa = n.pointee.ai_addr, Int(n.pointee.ai_addrlen) <= MemoryLayout<sockaddr_storage>.size {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) { memcpy($0.baseAddress!, sa, Int(n.pointee.ai_addrlen)) }
                if let a = SocketAddress(storage) { candidates.append(a) }
            }
            node = n.pointee.ai_next
        }
        guard let chosen = candidates.first(where: { $0.family == AF_INET }) ?? candidates.first else {
            throw .usage("\(flag): '\(host)' has no IPv4 or IPv6 address")
        }
        return chosen
    }

    private static func parseAddress(_ text: String, flag: String) throws(LoadError) -> SocketAddress {
        do {
            return try SocketAddress(parsing: text)
        } catch {
            throw .usage("\(flag): \(error.description)")
        }
    }

    private static func ipv4(_ s: String) -> UInt32? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard let b = UInt8(p) else { return nil }
            v = v << 8 | UInt32(b)
        }
        return v
    }
}
