// SPDX-License-Identifier: Apache-2.0
// `echoload sweep`: the seed's second test, and `make bench`'s matrix, for a server someone
// already runs: ping-pong over a grid of message sizes and connection counts plus a stream point,
// each run after a warm-up, repeated, summarised by medians; optionally against a second server
// (`--baseline`) measured alternately in the same run, every figure then also a ratio.
import EchoCore
import Glibc

public struct SweepPlan: Sendable {
    public var target: SocketAddress
    public var baseline: SocketAddress?
    public var sizes: [Int] = [64, 512, 4096, 65536]
    public var connections: [Int] = [1, 10, 100]
    /// The stream point: connections and bytes per write (nil: no stream point).
    public var stream: (connections: Int, size: Int)? = (10, 65536)
    public var duration: Int64 = 3_000_000_000
    public var warmup: Int64 = 1_000_000_000
    public var repeats = 3
    /// Options every run shares (model, processes, workers, sources, timeouts).
    public var template: LoadOptions

    public init(target: SocketAddress, template: LoadOptions) {
        self.target = target
        self.template = template
    }

    /// The points, in the order they run.
    public var points: [SweepPoint] {
        var out: [SweepPoint] = []
        for size in sizes {
            for c in connections { out.append(SweepPoint(mode: .pingpong, size: size, connections: c)) }
        }
        if let s = stream { out.append(SweepPoint(mode: .stream, size: s.size, connections: s.connections)) }
        return out
    }

    public func validate() throws(LoadError) {
        guard !sizes.isEmpty || stream != nil else { throw .usage("sweep: nothing to measure (no --sizes, no stream point)") }
        guard sizes.isEmpty || !connections.isEmpty else { throw .usage("sweep: --connections is empty") }
        guard (1...100).contains(repeats) else { throw .usage("--repeat must be between 1 and 100") }
        guard duration >= 100_000_000 else { throw .usage("--duration must be at least 100ms for a sweep") }
        for p in points {
            var o = options(for: p, against: target)
            o.processes = min(o.processes, p.connections)
            try o.validate()
        }
        if let b = baseline, b.family != target.family, !template.sources.isEmpty {
            throw .usage("--baseline \(b) is not of the target's address family (--source is)")
        }
    }

    /// The options of one run of `point` against `server`.
    public func options(for point: SweepPoint, against server: SocketAddress) -> LoadOptions {
        var o = template
        o.mode = point.mode
        o.target = server
        o.size = point.size
        o.connections = point.connections
        o.totalConnections = point.connections
        o.processes = min(template.processes, point.connections)
        o.duration = duration
        o.warmup = warmup
        o.rate = nil
        o.failUnderRate = nil
        return o
    }
}

/// One point of the grid.
public struct SweepPoint: Sendable, Equatable {
    public var mode: LoadMode
    public var size: Int
    public var connections: Int

    public var label: String {
        mode == .stream ? "stream \(Self.bytes(size)) × \(connections)" : "\(Self.bytes(size)) × \(connections)"
    }

    static func bytes(_ n: Int) -> String {
        n >= 1024 && n % 1024 == 0 ? "\(n / 1024) KiB" : "\(n) B"
    }
}

/// The figures of one run.
public struct SweepSample: Sendable {
    /// Messages per second (ping-pong; nil for the stream point, which has no messages).
    public var messagesPerSecond: Double?
    /// Echoed payload, MB/s (10^6 bytes).
    public var megabytesPerSecond: Double
    /// Round-trip latency, microseconds (ping-pong only).
    public var p50: Double?
    public var p99: Double?
    public var clean: Bool
    public var firstFault: String?

    init(_ r: LoadResult) {
        messagesPerSecond = r.options.mode == .stream ? nil : r.messagesPerSecond
        megabytesPerSecond = r.megabytesPerSecondReceived
        let l = r.latencyMicroseconds
        p50 = l?.first { $0.0 == "p50" }?.1
        p99 = l?.first { $0.0 == "p99" }?.1
        clean = r.isClean
        firstFault = r.tally.firstFault ?? (r.isClean ? nil : r.notes.first ?? "run not clean")
    }
}

/// A point's samples against the target (and the baseline), and their medians.
public struct SweepRow: Sendable {
    public var point: SweepPoint
    public var target: [SweepSample] = []
    public var baseline: [SweepSample] = []

    public static func median(_ v: [Double]) -> Double? {
        guard !v.isEmpty else { return nil }
        let s = v.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    static func medians(_ s: [SweepSample]) -> (mps: Double?, mbps: Double?, p50: Double?, p99: Double?) {
        (median(s.compactMap(\.messagesPerSecond)), median(s.map(\.megabytesPerSecond)),
         median(s.compactMap(\.p50)), median(s.compactMap(\.p99)))
    }

    /// Target's median MB/s over the baseline's, or nil without a baseline.
    public var ratio: Double? {
        guard let t = Self.median(target.map(\.megabytesPerSecond)), let b = Self.median(baseline.map(\.megabytesPerSecond)),
            b > 0
        else { return nil }
        return t / b
    }

    public var clean: Bool { (target + baseline).allSatisfy(\.clean) }
}

public enum Sweep {
    /// Runs every point `repeats` times against the target, and as often against the baseline
    /// (alternating which goes first, so that drift on a shared machine hits both alike).
    /// - Parameter log: told one line per run.
    public static func run(_ plan: SweepPlan, log: (String) -> Void) throws(LoadError) -> [SweepRow] {
        try plan.validate()
        var rows: [SweepRow] = []
        for point in plan.points {
            var row = SweepRow(point: point)
            for r in 0..<plan.repeats {
                var order: [(SocketAddress, Bool)] = [(plan.target, false)]
                if let b = plan.baseline { order = r % 2 == 0 ? [(plan.target, false), (b, true)] : [(b, true), (plan.target, false)] }
                for (server, isBaseline) in order {
                    let result = try LoadRunner.run(plan.options(for: point, against: server), progress: ProgressReporter(style: .none))
                    if let i = result.interruption { throw .system("echoload sweep: interrupted by \(i)") }
                    let s = SweepSample(result)
                    if isBaseline { row.baseline.append(s) } else { row.target.append(s) }
                    log("sweep: \(point.label) run \(r + 1)/\(plan.repeats)\(isBaseline ? " baseline" : ""): "
                        + (s.messagesPerSecond.map { "\(formatFixed($0, 0)) msg/s, " } ?? "") + "\(formatFixed(s.megabytesPerSecond, 2)) MB/s"
                        + (s.clean ? "" : " NOT CLEAN: \(s.firstFault ?? "")"))
                }
            }
            rows.append(row)
        }
        return rows
    }

    // MARK: - Reports

    public static func table(_ plan: SweepPlan, _ rows: [SweepRow]) -> String {
        var lines = ["echoload sweep \(plan.target)" + (plan.baseline.map { "  baseline \($0)" } ?? "")
            + "  model=\(plan.template.model.rawValue) processes=\(plan.template.processes)"
            + "  \(formatFixed(Double(plan.duration) / 1e9, 1)) s measured after \(formatFixed(Double(plan.warmup) / 1e9, 1)) s warm-up, medians of \(plan.repeats)"]
        var header = "point                    msg/s        MB/s   p50 µs   p99 µs"
        if plan.baseline != nil { header += "   base MB/s   ratio" }
        lines.append(header)
        func pad(_ s: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - s.count)) + s }
        func opt(_ v: Double?, _ d: Int) -> String { v.map { formatFixed($0, d) } ?? "-" }
        for row in rows {
            let t = SweepRow.medians(row.target)
            let mps = row.point.mode == .stream ? nil : t.mps
            var line = row.point.label.padding(20) + pad(opt(mps, 0), 9) + pad(opt(t.mbps, 2), 12)
                + pad(opt(t.p50, 1), 9) + pad(opt(t.p99, 1), 9)
            if plan.baseline != nil {
                line += pad(opt(SweepRow.medians(row.baseline).mbps, 2), 12) + pad(opt(row.ratio, 2), 8)
            }
            if !row.clean { line += "  NOT CLEAN" }
            lines.append(line)
        }
        let bad = rows.filter { !$0.clean }.count
        lines.append("result        " + (bad == 0 ? "clean (every byte of every run verified)" : "FAILED: \(bad) points had faults"))
        return lines.joined(separator: "\n")
    }

    public static func json(_ plan: SweepPlan, _ rows: [SweepRow]) -> JSONValue {
        func opt(_ v: Double?) -> JSONValue { v.map { .double(($0 * 1000).rounded() / 1000) } ?? .null }
        func samples(_ s: [SweepSample]) -> JSONValue {
            .array(s.map { x in
                .object([("messages_per_second", opt(x.messagesPerSecond)), ("megabytes_per_second", opt(x.megabytesPerSecond)),
                         ("p50_us", opt(x.p50)), ("p99_us", opt(x.p99)), ("clean", .bool(x.clean)),
                         ("first_fault", x.firstFault.map { .string($0) } ?? .null)])
            })
        }
        func summary(_ s: [SweepSample]) -> JSONValue {
            let m = SweepRow.medians(s)
            return .object([("messages_per_second", opt(m.mps)), ("megabytes_per_second", opt(m.mbps)),
                            ("p50_us", opt(m.p50)), ("p99_us", opt(m.p99))])
        }
        return .object([
            ("target", .string(plan.target.description)),
            ("baseline", plan.baseline.map { .string($0.description) } ?? .null),
            ("model", .string(plan.template.model.rawValue)),
            ("processes", .int(Int64(plan.template.processes))),
            ("duration_seconds", .double(Double(plan.duration) / 1e9)),
            ("warmup_seconds", .double(Double(plan.warmup) / 1e9)),
            ("repeats", .int(Int64(plan.repeats))),
            ("points", .array(rows.map { row in
                .object([
                    ("mode", .string(row.point.mode.rawValue)), ("size", .int(Int64(row.point.size))),
                    ("connections", .int(Int64(row.point.connections))),
                    ("median", summary(row.target)), ("runs", samples(row.target)),
                    ("baseline_median", plan.baseline == nil ? .null : summary(row.baseline)),
                    ("baseline_runs", plan.baseline == nil ? .null : samples(row.baseline)),
                    ("ratio", opt(row.ratio)), ("clean", .bool(row.clean)),
                ])
            })),
            ("clean", .bool(rows.allSatisfy(\.clean))),
        ])
    }

    /// An SVG chart: echoed MB/s (log scale) per ping-pong point, one bar per server; the stream
    /// point last.
    public static func chart(_ plan: SweepPlan, _ rows: [SweepRow]) -> String {
        let barWidth = 14.0, gap = 10.0, left = 70.0, top = 40.0, height = 260.0
        let servers = plan.baseline == nil ? 1 : 2
        let groupWidth = Double(servers) * barWidth + gap
        let width = left + Double(rows.count) * groupWidth + 30
        let values = rows.flatMap { r in [SweepRow.medians(r.target).mbps, SweepRow.medians(r.baseline).mbps].compactMap { $0 } }
        let maxV = max(values.max() ?? 1, 0.01)
        let minV = max(min(values.filter { $0 > 0 }.min() ?? 0.01, maxV / 10), 0.001)
        let lo = log10(minV) - 0.2, hi = log10(maxV) + 0.1
        func y(_ v: Double) -> Double { top + height - (log10(max(v, minV)) - lo) / (hi - lo) * height }
        func esc(_ s: String) -> String {
            s.replacingAll("&", "&amp;").replacingAll("<", "&lt;").replacingAll(">", "&gt;")
        }
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(top + height + 90))\" font-family=\"sans-serif\" font-size=\"11\">\n"
        svg += "<text x=\"\(left)\" y=\"20\" font-size=\"13\">\(esc("echoload sweep \(plan.target): echoed MB/s, medians of \(plan.repeats) (log scale)"))</text>\n"
        var tick = pow(10, floor(lo))
        while log10(tick) <= hi {
            if log10(tick) >= lo {
                svg += "<line x1=\"\(left)\" x2=\"\(width - 20)\" y1=\"\(y(tick))\" y2=\"\(y(tick))\" stroke=\"#ddd\"/>"
                svg += "<text x=\"\(left - 6)\" y=\"\(y(tick) + 4)\" text-anchor=\"end\">\(esc(formatFixed(tick, tick < 1 ? 2 : 0)))</text>\n"
            }
            tick *= 10
        }
        for (i, row) in rows.enumerated() {
            let x0 = left + Double(i) * groupWidth + gap / 2
            for (k, samples) in [row.target, row.baseline].prefix(servers).enumerated() {
                guard let v = SweepRow.medians(samples).mbps else { continue }
                let x = x0 + Double(k) * barWidth
                svg += "<rect x=\"\(x)\" y=\"\(y(v))\" width=\"\(barWidth - 2)\" height=\"\(top + height - y(v))\" fill=\"\(k == 0 ? "#3366cc" : "#aaaaaa")\"><title>\(esc("\(row.point.label): \(formatFixed(v, 2)) MB/s"))</title></rect>\n"
            }
            let cx = x0 + Double(servers) * barWidth / 2
            svg += "<text transform=\"translate(\(cx),\(top + height + 8)) rotate(60)\">\(esc(row.point.label))</text>\n"
        }
        svg += "<rect x=\"\(left)\" y=\"\(top + height + 70)\" width=\"10\" height=\"10\" fill=\"#3366cc\"/><text x=\"\(left + 14)\" y=\"\(top + height + 79)\">\(esc(plan.target.description))</text>\n"
        if let b = plan.baseline {
            svg += "<rect x=\"\(left + 200)\" y=\"\(top + height + 70)\" width=\"10\" height=\"10\" fill=\"#aaaaaa\"/><text x=\"\(left + 214)\" y=\"\(top + height + 79)\">\(esc("baseline \(b)"))</text>\n"
        }
        return svg + "</svg>\n"
    }
}

extension String {
    func padding(_ n: Int) -> String { self + String(repeating: " ", count: max(0, n - count)) }

    func replacingAll(_ a: String, _ b: String) -> String {
        guard !a.isEmpty else { return self }
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: a) {
            out += rest[..<r.lowerBound]
            out += b
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}
