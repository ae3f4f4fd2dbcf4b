// SPDX-License-Identifier: Apache-2.0
// A finished run and how it is shown: a table for people and a JSON document whose shape is
// fixed by docs/echoload.schema.json (`schema_version` 1).
import Histogram

/// One process's share of a split run, as listed in the report.
public struct PartSummary: Sendable, Equatable {
    public var index: Int
    public var pid: Int32
    public var connections: Int
    public var established: Int
    public var held: Int
    public var messages: UInt64
    public var faults: Int
    /// Exit status of the process (0 for the parent's own share).
    public var exitStatus: Int32
}

/// A finished run.
public struct LoadResult: Sendable {
    public var options: LoadOptions
    /// Event-model threads per process (0 for the thread and fork models).
    public var workers: Int
    public var tally: Tally
    /// One entry per process; a single-process run has one, for itself.
    public var parts: [PartSummary]
    /// Problems outside the counters (a child process that died, ...).
    public var notes: [String] = []
    /// max: what stopped the connect ramp (nil: every connection of --limit was opened).
    public var rampStoppedBy: String?
    /// Wall-clock time (nanoseconds since the epoch) the measured window (for `hold`: the hold)
    /// began; nil if the run never started.
    public var windowStartWall: Int64?
    /// With `--start-at`: how much later than asked traffic began (connects took longer), 0 if on time.
    public var startLateNanos: Int64 = 0
    /// `echoload merge`: how many runs this result merges (1 for a run), and how far apart their
    /// measured windows began (latest start minus earliest).
    public var mergedRuns = 1
    public var mergedStartSpreadNanos: Int64 = 0

    public init(options: LoadOptions, workers: Int, tally: Tally, parts: [PartSummary]) {
        self.options = options
        self.workers = workers
        self.tally = tally
        self.parts = parts
    }

    /// Held connections, for `hold`.
    public var held: Int { tally.held }

    /// The mode's name: `max` is a hold whose ramp stops at the server's refusal.
    public var modeName: String { options.ramp != nil ? "max" : options.mode.rawValue }

    /// max: what stopped the ramp, in words (every connection of --limit opened, if nothing did).
    public var rampStopReason: String? {
        guard options.ramp != nil else { return nil }
        if let r = rampStoppedBy { return r }
        return interruption != nil ? "interrupted" : "--limit \(options.connections) reached: every connection opened"
    }

    /// What interrupted the run (`SIGINT`, `SIGTERM`), or nil if it ran its course.
    public var interruption: String? {
        switch tally.interruptedBy {
        case 0: return nil
        case -1: return "parent gone"
        default: return StopSignals.name(tally.interruptedBy)
        }
    }

    /// `rate`: messages per second handed to the sockets in the measured period (the offered load).
    public var offeredPerSecond: Double? {
        guard options.mode == .rate || options.mode == .udp, seconds > 0 else { return nil }
        return Double(tally.issued) / seconds
    }

    /// `rate` with `--fail-under-rate F`: the offered rate fell below F × the target.
    public var rateMissed: Bool {
        guard let f = options.failUnderRate, let r = options.rate, let offered = offeredPerSecond else { return false }
        return offered < f * r
    }

    /// A clean run: no reason against it (`uncleanReasons` is empty).
    public var isClean: Bool { uncleanReasons.isEmpty }

    /// Every reason the run is not clean, one phrase each, for people and `--json`: it was
    /// interrupted, connections were not established (by errno) or not held, echoes were wrong,
    /// a process ended without its result, nothing was measured, or the offered rate fell under
    /// `--fail-under-rate`. Empty for a clean run; a run is never unclean without saying why.
    public var uncleanReasons: [String] {
        let t = tally
        var why: [String] = []
        if let i = interruption { why.append("interrupted by \(i)") }
        if options.ramp == nil && t.established < options.connections {
            var r = "\(options.connections - t.established) of \(options.connections) connections not established"
            if !t.connectFailures.isEmpty { r += " (" + Self.byKind(t.connectFailures) + ")" }
            why.append(r)
        }
        if t.faults > 0 { why.append("\(t.faults) echo fault\(t.faults == 1 ? "" : "s")") }
        for n in notes { why.append(n) }
        let failedParts = parts.filter { $0.exitStatus != 0 }
        if !failedParts.isEmpty {
            why.append("\(failedParts.count) process\(failedParts.count == 1 ? "" : "es") exited non-zero ("
                + failedParts.map { "part \($0.index): \($0.exitStatus)" }.joined(separator: ", ") + ")")
        }
        switch options.mode {
        case .hold:
            if options.ramp != nil {
                if t.held == 0 && interruption == nil { why.append("no connection was held") }
            } else if t.held < options.connections && t.established > t.held {
                why.append("\(t.established - t.held) of \(t.established) established connections not held (no answer to the probe)")
            }
        case .pingpong, .rate:
            if options.duration > 0 && t.messages == 0 && interruption == nil { why.append("no message was echoed in the measured period") }
        case .stream:
            if options.duration > 0 && t.bytesReceived == 0 && interruption == nil { why.append("no byte was echoed in the measured period") }
        case .udp:
            if options.duration > 0 && t.messages == 0 && interruption == nil { why.append("no datagram was echoed in the measured period") }
            if lossExceeded {
                why.append("\(formatFixed((t.datagrams?.lossFraction ?? 0) * 100, 3))% of the datagrams lost, over --max-loss \(formatFixed(options.maxLoss * 100, 3))%")
            }
        }
        if rateMissed, let f = options.failUnderRate, let r = options.rate, let offered = offeredPerSecond {
            why.append("offered rate \(formatFixed(offered, 1)) msg/s is \(formatFixed(offered / r * 100, 1))% of the target, under --fail-under-rate \(formatFixed(f * 100, 1))%")
        }
        return why
    }

    /// The connect rate over time in one line: each second's count for short ramps, else about
    /// ten equal spans with their mean rate (`0-7s 25.1k/s, 8-15s 21.0k/s, ...`), so a slowing
    /// ramp shows.
    static func compactTimeline(_ perSecond: [Int]) -> String {
        func k(_ v: Double) -> String { v >= 1000 ? formatFixed(v / 1000, 1) + "k" : formatFixed(v, 0) }
        if perSecond.count <= 12 {
            return "per second: " + perSecond.map { k(Double($0)) }.joined(separator: " ")
        }
        let span = (perSecond.count + 9) / 10
        var parts: [String] = []
        var i = 0
        while i < perSecond.count {
            let j = min(perSecond.count, i + span)
            let mean = Double(perSecond[i..<j].reduce(0, +)) / Double(j - i)
            parts.append("\(i)-\(j - 1)s \(k(mean))/s")
            i = j
        }
        return parts.joined(separator: ", ")
    }

    /// `ETIMEDOUT 3, ECONNREFUSED 1`: counts by kind, largest first.
    static func byKind(_ counts: [String: Int]) -> String {
        counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.map { "\($0.key) \($0.value)" }
            .joined(separator: ", ")
    }

    /// `udp`: more datagrams lost than `--max-loss` allows.
    public var lossExceeded: Bool {
        options.mode == .udp && (tally.datagrams?.lossFraction ?? 0) > options.maxLoss
    }

    /// Exit status for the run: 0 clean, 1 faults found (or fell short), 128 + N when signal N
    /// (SIGINT: 130, SIGTERM: 143) interrupted it.
    public var exitStatus: Int32 {
        if tally.interruptedBy > 0 { return 128 + tally.interruptedBy }
        return isClean ? 0 : 1
    }

    var seconds: Double { Double(tally.measuredNanos) / 1e9 }

    public var messagesPerSecond: Double { seconds > 0 ? Double(tally.messages) / seconds : 0 }
    public var megabytesPerSecondSent: Double { seconds > 0 ? Double(tally.bytesSent) / seconds / 1e6 : 0 }
    public var megabytesPerSecondReceived: Double { seconds > 0 ? Double(tally.bytesReceived) / seconds / 1e6 : 0 }

    /// Percentiles of round-trip latency in microseconds, or nil when none was recorded.
    public var latencyMicroseconds: [(String, Double)]? {
        guard let h = tally.latency, h.totalCount > 0 else { return nil }
        func us(_ v: UInt64) -> Double { (Double(v) / 1000 * 1000).rounded() / 1000 }
        return [
            ("min", us(h.min)), ("p50", us(h.valueAtPercentile(50))), ("p90", us(h.valueAtPercentile(90))),
            ("p99", us(h.valueAtPercentile(99))), ("p99_9", us(h.valueAtPercentile(99.9))),
            ("max", us(h.max)), ("mean", (h.mean / 1000 * 1000).rounded() / 1000),
        ]
    }

    // MARK: - JSON

    /// The report as JSON (see docs/echoload.schema.json).
    public var json: JSONValue {
        let t = tally
        let o = options
        func r3(_ d: Double) -> JSONValue { .double((d * 1000).rounded() / 1000) }
        func counts(_ d: [String: Int]) -> JSONValue {
            .object(d.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })
        }
        var latency: JSONValue = .null
        if let l = latencyMicroseconds, let h = t.latency {
            latency = .object([("count", .int(Int64(h.totalCount)))] + l.map { ($0.0, .double($0.1)) })
        }
        let errors: JSONValue = .object([
            ("total", .int(Int64(t.faults))),
            ("mismatches", .int(Int64(t.mismatches))),
            ("short_reads", .int(Int64(t.shortReads))),
            ("premature_closes", .int(Int64(t.prematureCloses))),
            ("timeouts", .int(Int64(t.timeouts))),
            ("io", counts(t.ioErrors)),
            ("first", t.firstFault.map { .string($0) } ?? .null),
        ])
        let rateOnly = o.mode == .rate || o.mode == .udp
        var datagrams: JSONValue = .null
        if let d = t.datagrams {
            datagrams = .object([
                ("sent", .int(Int64(d.sent))), ("echoed", .int(Int64(d.echoed))), ("lost", .int(Int64(d.lost))),
                ("loss_fraction", .double((d.lossFraction * 1e6).rounded() / 1e6)), ("max_loss", .double(o.maxLoss)),
                ("duplicates", .int(Int64(d.duplicates))), ("reordered", .int(Int64(d.reordered))),
            ])
        }
        let traffic: JSONValue = .object([
            ("measured_seconds", r3(seconds)),
            ("messages", .int(Int64(t.messages))),
            ("bytes_sent", .int(Int64(t.bytesSent))),
            ("bytes_received", .int(Int64(t.bytesReceived))),
            ("messages_per_second", r3(messagesPerSecond)),
            ("megabytes_per_second_sent", r3(megabytesPerSecondSent)),
            ("megabytes_per_second_received", r3(megabytesPerSecondReceived)),
            ("total_bytes_sent", .int(Int64(t.totalBytesSent))),
            ("total_bytes_received", .int(Int64(t.totalBytesReceived))),
            ("scheduled_messages", rateOnly ? JSONValue.int(Int64(t.scheduled)) : .null),
            ("issued_messages", rateOnly ? JSONValue.int(Int64(t.issued)) : .null),
            ("offered_messages_per_second", offeredPerSecond.map { r3($0) } ?? .null),
            ("rate_met", rateOnly && o.failUnderRate != nil ? JSONValue.bool(!rateMissed) : .null),
            ("largest_write_bytes", .int(Int64(t.largestWrite))),
        ])
        let optionsJSON: JSONValue = .object([
            ("connections", .int(Int64(o.connections))),
            ("size", .int(Int64(o.size))),
            ("rate", o.rate.map { .double($0) } ?? .null),
            ("duration_seconds", .double(Double(o.duration) / 1e9)),
            ("warmup_seconds", .double(Double(o.warmup) / 1e9)),
            ("sources", .int(Int64(o.sources.count))),
        ])
        let held: JSONValue = o.mode == .hold ? .int(Int64(t.held)) : .null
        let holdSeconds: JSONValue = o.mode == .hold ? r3(Double(t.holdNanos) / 1e9) : .null
        let perSecond: JSONValue = .array(t.connectTimeline.map { .int(Int64($0)) })
        let connectionsJSON: JSONValue = .object([
            ("requested", .int(Int64(o.connections))),
            ("established", .int(Int64(t.established))),
            ("failed", .int(Int64(t.connectFailed))),
            ("failures", counts(t.connectFailures)),
            ("connect_seconds", r3(Double(t.connectNanos) / 1e9)),
            ("established_per_second", perSecond),
            ("held", held),
            ("hold_seconds", holdSeconds),
        ])
        let partsJSON: [JSONValue] = parts.map { p in
            .object([
                ("index", .int(Int64(p.index))), ("pid", .int(Int64(p.pid))),
                ("connections", .int(Int64(p.connections))), ("established", .int(Int64(p.established))),
                ("held", .int(Int64(p.held))), ("messages", .int(Int64(p.messages))),
                ("faults", .int(Int64(p.faults))), ("exit_status", .int(Int64(p.exitStatus))),
            ])
        }
        let reasons: [JSONValue] = uncleanReasons.map { .string($0) }
        var members: [(String, JSONValue)] = [
            ("schema_version", .int(1)),
            ("mode", .string(modeName)),
            ("target", .string(o.target.description)),
            ("model", .string(o.model.rawValue)),
            ("processes", .int(Int64(parts.count))),
            ("workers", .int(Int64(workers))),
            ("options", optionsJSON),
            ("connections", connectionsJSON),
        ]
        members += [
            ("plan", o.plan.map { .string($0) } ?? .null),
            ("max", o.ramp == nil ? .null : .object([
                ("held", .int(Int64(t.held))),
                ("stopped_by", .string(rampStopReason ?? "")),
                ("unanswered", .int(Int64(t.unanswered))),
                ("closed_by_server", .int(Int64(t.closedByServer))),
            ])),
            ("traffic", traffic),
            ("latency_us", latency),
            ("errors", errors),
            ("parts", .array(partsJSON)),
            ("datagrams", datagrams),
            ("notes", .array(notes.map { .string($0) })),
            ("interrupted", interruption.map { .string($0) } ?? .null),
            ("clean", .bool(isClean)),
            ("unclean_reasons", .array(reasons)),
        ]
        let windowStart: JSONValue = windowStartWall.map { .string(WallClock.format($0)) } ?? .null
        let windowStartNanos: JSONValue = windowStartWall.map { .int($0) } ?? .null
        let startAtText: JSONValue = options.startAt.map { .string(WallClock.format($0)) } ?? .null
        members += [
            ("window_start", windowStart),
            ("window_start_unix_ns", windowStartNanos),
            ("start_at", startAtText),
            ("start_late_seconds", r3(Double(startLateNanos) / 1e9)),
            ("merged", .object([
                ("runs", .int(Int64(mergedRuns))),
                ("window_start_spread_seconds", r3(Double(mergedStartSpreadNanos) / 1e9)),
            ])),
            // Everything counted, exactly (latency histogram included), for `echoload merge`.
            ("exact", .object([("options", options.wireJSON), ("tally", tally.wireJSON)])),
            ("intervals", intervalsJSON),
        ]
        return .object(members)
    }

    // MARK: - Table

    /// The report for people.
    public var table: String {
        let t = tally
        let o = options
        func f(_ d: Double, _ digits: Int = 1) -> String { formatFixed(d, digits) }
        var lines: [String] = []
        lines.append("echoload \(modeName) \(o.target)  model=\(o.model.rawValue)"
            + (o.model == .event ? " workers=\(workers)" : "") + " processes=\(parts.count)")
        var conn = "connections  requested \(o.connections)  established \(t.established)  failed \(t.connectFailed)"
        if !t.connectFailures.isEmpty {
            conn += " (" + t.connectFailures.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"
        }
        conn += "  in \(f(Double(t.connectNanos) / 1e9, 3)) s"
        lines.append(conn)
        if let plan = o.plan { lines.append("plan         \(plan)") }
        if t.connectNanos >= 1_000_000_000 && t.connectTimeline.count >= 2 {
            lines.append("connect rate \(Self.compactTimeline(t.connectTimeline))")
        }
        switch o.mode {
        case .hold where o.ramp != nil:
            lines.append("max          held \(t.held) (all open at once after a \(f(Double(t.holdNanos) / 1e9, 3)) s hold, each answering a probe while every other stayed open)")
            lines.append("stopped by   \(rampStopReason ?? "")")
            if t.unanswered > 0 || t.closedByServer > 0 {
                lines.append("not held     \(t.unanswered) open but unanswered, \(t.closedByServer) closed by the server during the ramp")
            }
        case .hold:
            lines.append("hold         \(f(Double(t.holdNanos) / 1e9, 3)) s with all open at once (from the run's start); held \(t.held) of \(o.connections) (each answered a probe afterwards)")
        case .pingpong, .rate, .udp:
            var line = "traffic      \(f(seconds, 2)) s measured: \(t.messages) messages × \(o.size) B = \(t.bytesReceived) B"
            line += "; \(f(messagesPerSecond, 1)) msg/s, \(f(megabytesPerSecondReceived, 2)) MB/s"
            if o.mode != .pingpong, let r = o.rate { line += " (target \(f(r, 1)) msg/s, scheduled \(t.scheduled))" }
            lines.append(line)
            if let r = o.rate, let offered = offeredPerSecond {
                var l = "offered      \(f(offered, 1)) msg/s handed to the sockets = \(f(offered / r * 100, 1))% of the target"
                if t.issued < t.scheduled { l += "; target missed: \(t.issued) of \(t.scheduled) scheduled messages issued" }
                if let fu = o.failUnderRate { l += rateMissed ? "; BELOW --fail-under-rate \(f(fu * 100, 1))%" : " (≥ \(f(fu * 100, 1))%)" }
                lines.append(l)
            }
            if let l = latencyMicroseconds {
                lines.append("latency µs   " + l.map { "\($0.0 == "p99_9" ? "p99.9" : $0.0) \(f($0.1, 1))" }.joined(separator: "  ")
                    + (o.mode == .pingpong ? "" : "  (from intended send times)"))
            }
            if let d = t.datagrams {
                lines.append("datagrams    sent \(d.sent)  echoed \(d.echoed)  lost \(d.lost) (\(f(d.lossFraction * 100, 3))%"
                    + (lossExceeded ? ", over --max-loss \(f(o.maxLoss * 100, 3))%)" : ")")
                    + "  duplicated \(d.duplicates)  reordered \(d.reordered)")
            }
        case .stream:
            lines.append("traffic      \(f(seconds, 2)) s measured: sent \(f(megabytesPerSecondSent, 2)) MB/s, received \(f(megabytesPerSecondReceived, 2)) MB/s (\(t.bytesSent) / \(t.bytesReceived) B)")
        }
        if t.faults == 0 {
            lines.append("errors       none")
        } else {
            var e = "errors       \(t.faults):"
            if t.mismatches > 0 { e += " mismatches \(t.mismatches)" }
            if t.shortReads > 0 { e += " short-reads \(t.shortReads)" }
            if t.prematureCloses > 0 { e += " premature-closes \(t.prematureCloses)" }
            if t.timeouts > 0 { e += " timeouts \(t.timeouts)" }
            for (k, v) in t.ioErrors.sorted(by: { $0.key < $1.key }) { e += " \(k) \(v)" }
            lines.append(e)
            if let first = t.firstFault { lines.append("first fault  \(first)") }
        }
        if parts.count > 12 {
            let bad = parts.filter { $0.exitStatus != 0 }
            lines.append("  \(parts.count) processes: \(parts.map(\.established).min() ?? 0)-\(parts.map(\.established).max() ?? 0) connected each"
                + (o.mode == .hold ? ", \(parts.map(\.held).min() ?? 0)-\(parts.map(\.held).max() ?? 0) held each" : "")
                + ", \(bad.count) exited non-zero (--json lists every part)")
        } else if parts.count > 1 {
            for p in parts {
                lines.append("  part \(p.index) pid \(p.pid): \(p.established)/\(p.connections) connected"
                    + (o.mode == .hold ? ", \(p.held) held" : ", \(p.messages) messages")
                    + ", \(p.faults) faults, exit \(p.exitStatus)")
            }
        }
        if let line = intervalsLine { lines.append(line) }
        if mergedRuns > 1 {
            lines.append("merged       \(mergedRuns) runs; measured windows began within \(f(Double(mergedStartSpreadNanos) / 1e9, 3)) s of each other")
        }
        if startLateNanos > 0, let at = options.startAt {
            lines.append("start        \(f(Double(startLateNanos) / 1e9, 3)) s after --start-at \(WallClock.format(at)) (connects took longer)")
        }
        for n in notes { lines.append("note         \(n)") }
        if let i = interruption {
            lines.append("interrupted  by \(i): a partial result, counted up to the interruption")
        }
        let reasons = uncleanReasons
        lines.append("result       " + (interruption != nil ? "interrupted" : isClean ? "clean" : "FAILED")
            + (reasons.isEmpty ? "" : ": " + reasons.joined(separator: "; ")))
        return lines.joined(separator: "\n")
    }
}
