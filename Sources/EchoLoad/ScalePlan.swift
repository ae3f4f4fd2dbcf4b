// SPDX-License-Identifier: Apache-2.0
// How many processes and which source addresses a large `hold` (or `max`) needs, chosen from
// the host's limits so that `echoload hold 127.0.0.1:7 -c 1000000` works as written:
//
// - processes: one process may hold at most RLIMIT_NOFILE's hard limit of descriptors (20,000
//   on the development machine; root cannot raise it past fs.nr_open). Each process keeps
//   `headroom` of them for its own epoll, timer, eventfds and pipes.
// - source addresses: with one target (address and port), a connection is unique by its source
//   address and port only, so one source address gives at most the ephemeral port range
//   (net.ipv4.ip_local_port_range) of connections. connect(2) looks for a free port in one
//   half of the range first (ports of one parity; bind(2) prefers the other), and past that half
//   each connect scans the whole range: measured here, 20,000 connections from one address took
//   80 s (the last 6,000 in bursts seconds apart) and 1.6 s from two. So a source is given at
//   most 45 % of the range. On loopback every address of
//   127.0.0.0/8 is local, so echoload picks them itself (from 127.0.0.2, skipping the target's
//   own address); elsewhere the addresses must be configured on the host and passed with
//   `--source`, and a run that needs them says so.
import EchoCore
import Glibc

/// The processes and source addresses chosen for a run, and the sentence that says why.
public struct ScalePlan: Sendable, Equatable {
    /// Processes to split the connections over.
    public var processes: Int
    /// Source addresses (empty: the kernel chooses, as without `--source`).
    public var sources: [SocketAddress]
    /// What was chosen and why, one line for people (also in `--json`: `plan`).
    public var summary: String

    /// Descriptors each process keeps for itself besides its connections: 5 % of the limit,
    /// at least 64.
    static func headroom(_ hardLimit: Int) -> Int { max(64, hardLimit / 20) }

    /// Connections one source address is given: 45 % of the ephemeral port range (within the
    /// half connect(2) searches first).
    static func perSource(_ ports: Int) -> Int { max(1, ports / 2 - ports / 20) }

    /// Chooses processes (unless `chooseProcesses` is false) and source addresses (unless
    /// `chooseSources` is false) for `connections` connections to `target`.
    ///
    /// - Parameters:
    ///   - hardLimit: RLIMIT_NOFILE's hard limit.
    ///   - ports: the ephemeral port range (net.ipv4.ip_local_port_range).
    /// - Returns: nil when one process with the kernel's choice of source address will do.
    /// - Throws: `LoadError.usage` when the run needs source addresses echoload cannot pick
    ///   (a target that is not on IPv4 loopback), explaining what to configure.
    public static func choose(
        connections: Int, target: SocketAddress, chooseProcesses: Bool, chooseSources: Bool,
        hardLimit: Int, ports: ClosedRange<Int>
    ) throws(LoadError) -> ScalePlan? {
        var words: [String] = []
        var processes = 1
        let perProcess = hardLimit - headroom(hardLimit)
        if chooseProcesses && connections + 64 > hardLimit && perProcess > 0 {
            processes = (connections + perProcess - 1) / perProcess
            words.append("\(processes) processes of at most \(perProcess) connections (RLIMIT_NOFILE hard limit \(hardLimit))")
        }
        var sources: [SocketAddress] = []
        let portCount = ports.count
        let perSource = Self.perSource(portCount)
        if chooseSources && connections > perSource {
            let needed = (connections + perSource - 1) / perSource
            let range = "ports \(ports.lowerBound)-\(ports.upperBound)"
            guard target.family == AF_INET, let t = ipv4(target), t >> 24 == 127 else {
                throw .usage(
                    "echoload: \(connections) connections to one target need \(needed) local source addresses (each gives at most \(perSource) of the \(portCount) ephemeral \(range), net.ipv4.ip_local_port_range); configure that many addresses on this host and pass them with --source A-B (only on IPv4 loopback, 127.0.0.0/8, does echoload pick them itself)")
            }
            guard needed <= LoadParsing.maxSources else {
                throw .usage("echoload: \(connections) connections need \(needed) source addresses; at most \(LoadParsing.maxSources)")
            }
            var v: UInt32 = 0x7F00_0002  // 127.0.0.2
            while sources.count < needed {
                if v != t { sources.append(address(v)) }
                v += 1
            }
            let first = sources.first!.host
            let last = sources.last!.host
            words.append("\(needed) source addresses \(first)-\(last) (at most \(perSource) connections each of the \(portCount) ephemeral \(range))")
        }
        guard !words.isEmpty else { return nil }
        return ScalePlan(processes: processes, sources: sources,
                         summary: "\(connections) connections: " + words.joined(separator: "; "))
    }

    /// The host's figures: RLIMIT_NOFILE's hard limit and net.ipv4.ip_local_port_range.
    public static func hostLimits() -> (hardLimit: Int, ports: ClosedRange<Int>) {
        var hard = 1024
        if let l = try? ResourceLimits.get(ResourceLimits.noFile) { hard = Int(min(l.hard, UInt64(Int32.max))) }
        var ports = 32768...60999
        if let text = readSmallFile("/proc/sys/net/ipv4/ip_local_port_range") {
            let v = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }
            if v.count == 2, v[0] <= v[1] { ports = v[0]...v[1] }
        }
        return (hard, ports)
    }

    private static func ipv4(_ a: SocketAddress) -> UInt32? {
        let parts = a.host.split(separator: ".").compactMap { UInt32($0) }
        guard parts.count == 4, parts.allSatisfy({ $0 < 256 }) else { return nil }
        return parts.reduce(0) { $0 << 8 | $1 }
    }

    private static func address(_ v: UInt32) -> SocketAddress {
        // A dotted quad always parses.
        try! SocketAddress(parsing: "\(v >> 24).\(v >> 16 & 255).\(v >> 8 & 255).\(v & 255):0")
    }
}

/// The whole of a small text file (a /proc or /sys entry), or nil.
func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { closeNoRetry(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n > 0 { bytes += chunk[0..<n]; continue }
        if n < 0 && errno == EINTR { continue }
        break
    }
    return String(decoding: bytes, as: UTF8.self)
}
