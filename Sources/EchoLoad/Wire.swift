// SPDX-License-Identifier: Apache-2.0
// The parent–child protocol of a split run (`--processes P`, `--model fork`), JSON lines both ways.
//
// Parent → child, on the child's stdin (a pipe kept open for the whole run):
//   1. the child's options (`LoadOptions.wireJSON`), one line;
//   2. `{"type":"connect","at":E}` once every child is `armed`: connects may start, connection g
//      (global index) at E + g/rate in `hold --rate`;
//   3. `{"type":"start","at":T}` once every child is `ready`: the one start of the run;
//   4. hold: `{"type":"release","at":R}` once every child is `probed`: held connections may close;
//   5. max: `{"type":"ramp","at":t,"reason":...}` when a process stopped its ramp: stop connecting;
//   6. `{"type":"stop","at":S,"signal":N}` if the parent was interrupted.
//   EOF before the result: the parent is gone; the child stops and reports.
// Times are absolute CLOCK_MONOTONIC nanoseconds: one clock for every process of the host.
//
// Child → parent, on its stdout (a pipe): `{"type":"armed"}` once it has read its options,
// `{"type":"ready","at":t}` once all of its connects are resolved, `{"type":"probed","at":t}`
// once its hold probes are resolved, `{"type":"ramp","at":t,"reason":...}` when it stops the
// max ramp, `{"type":"progress",...}` about
// once a second, then one `{"type":"result",...}` carrying its whole `Tally`, histogram included
// as (value, count) pairs plus the exact minimum and maximum: re-recorded, the pairs fill the
// same buckets and the extremes restore the min/max trackers, so the parent's merge equals an
// in-process `add`.
import EchoCore
import Glibc
import Histogram

extension LoadOptions {
    /// The options as JSON, for a child process.
    public var wireJSON: JSONValue {
        .object([
            ("mode", .string(mode.rawValue)),
            ("target", .string(target.description)),
            ("connections", .int(Int64(connections))),
            ("size", .int(Int64(size))),
            ("rate", rate.map { .double($0) } ?? .null),
            ("duration", .int(duration)),
            ("warmup", .int(warmup)),
            ("sources", .array(sources.map { .string($0.description) })),
            ("model", .string(model.rawValue)),
            ("workers", .int(Int64(workers))),
            ("connect_timeout", .int(connectTimeout)),
            ("drain_timeout", .int(drainTimeout)),
            ("base", .int(Int64(connectionIndexBase))),
            ("connect_concurrency", .int(Int64(connectConcurrency))),
            ("total_connections", .int(Int64(totalConnections))),
            ("fail_under_rate", failUnderRate.map { .double($0) } ?? .null),
            ("ramp", ramp.map { .array([.int($0.memoryFloor), .int($0.timeLimit)]) } ?? .null),
            ("start_at", startAt.map { .int($0) } ?? .null),
            ("interval", .int(intervalLength)),
        ])
    }

    /// Reads options written by `wireJSON`.
    /// - Throws: `LoadError.usage` if anything is missing or malformed.
    public init(wire json: JSONValue) throws(LoadError) {
        func int(_ k: String) throws(LoadError) -> Int64 {
            guard let v = json[k]?.intValue else { throw .usage("internal: child spec lacks \(k)") }
            return v
        }
        guard let m = json["mode"]?.stringValue.flatMap(LoadMode.init(rawValue:)),
            let t = json["target"]?.stringValue, let target = try? SocketAddress(parsing: t),
            let model = json["model"]?.stringValue.flatMap(ClientModel.init(rawValue:))
        else { throw .usage("internal: malformed child spec") }
        self.init(mode: m, target: target, connections: Int(try int("connections")))
        size = Int(try int("size"))
        rate = json["rate"]?.doubleValue
        duration = try int("duration")
        warmup = try int("warmup")
        sources = (json["sources"]?.arrayValue ?? []).compactMap { $0.stringValue.flatMap { try? SocketAddress(parsing: $0) } }
        self.model = model
        workers = Int(try int("workers"))
        connectTimeout = try int("connect_timeout")
        drainTimeout = try int("drain_timeout")
        connectionIndexBase = Int(try int("base"))
        connectConcurrency = Int(try int("connect_concurrency"))
        totalConnections = Int(try int("total_connections"))
        failUnderRate = json["fail_under_rate"]?.doubleValue
        if let r = json["ramp"]?.arrayValue, r.count == 2, let floor = r[0].intValue, let limit = r[1].intValue {
            ramp = RampLimits(memoryFloor: floor, timeLimit: limit)
        }
        startAt = json["start_at"]?.intValue
        intervalLength = json["interval"]?.intValue ?? 0
    }
}

extension Tally {
    /// Everything counted, histogram included, for the parent to merge.
    public var wireJSON: JSONValue {
        var pairs: [JSONValue] = []
        if let h = latency {
            for v in h.recordedValues() {
                pairs.append(.array([.int(Int64(v.value)), .int(Int64(v.countAddedInThisIterationStep))]))
            }
        }
        func counts(_ d: [String: Int]) -> JSONValue { .object(d.map { ($0.key, .int(Int64($0.value))) }) }
        return .object([
            ("requested", .int(Int64(requested))), ("established", .int(Int64(established))),
            ("connect_failures", counts(connectFailures)), ("connect_nanos", .int(connectNanos)),
            ("held", .int(Int64(held))), ("measured_nanos", .int(measuredNanos)),
            ("messages", .int(Int64(messages))), ("bytes_sent", .int(Int64(bytesSent))),
            ("bytes_received", .int(Int64(bytesReceived))), ("total_bytes_sent", .int(Int64(totalBytesSent))),
            ("total_bytes_received", .int(Int64(totalBytesReceived))), ("scheduled", .int(Int64(scheduled))),
            ("mismatches", .int(Int64(mismatches))), ("short_reads", .int(Int64(shortReads))),
            ("premature_closes", .int(Int64(prematureCloses))), ("timeouts", .int(Int64(timeouts))),
            ("io_errors", counts(ioErrors)),
            ("latency", latency == nil ? .null : .array(pairs)),
            ("latency_min", .int(Int64(latency?.min ?? 0))),
            ("latency_max", .int(Int64(latency?.maxRecorded ?? 0))),
            ("first_fault", firstFault.map { .string($0) } ?? .null),
            ("issued", .int(Int64(issued))), ("hold_nanos", .int(holdNanos)), ("interrupted_by", .int(Int64(interruptedBy))),
            ("largest_write", .int(Int64(largestWrite))),
            ("unanswered", .int(Int64(unanswered))), ("closed_by_server", .int(Int64(closedByServer))),
            ("connect_timeline", .array(connectTimeline.map { .int(Int64($0)) })),
            ("intervals", intervals.wireJSON),
        ])
    }

    /// Reads a tally written by `wireJSON`.
    public init(wire json: JSONValue) {
        self.init()
        func i(_ k: String) -> Int { Int(json[k]?.intValue ?? 0) }
        func u(_ k: String) -> UInt64 { UInt64(max(0, json[k]?.intValue ?? 0)) }
        func counts(_ k: String) -> [String: Int] {
            var d: [String: Int] = [:]
            for (key, v) in json[k]?.objectValue ?? [] { d[key] = Int(v.intValue ?? 0) }
            return d
        }
        requested = i("requested")
        established = i("established")
        connectFailures = counts("connect_failures")
        connectNanos = Int64(i("connect_nanos"))
        held = i("held")
        measuredNanos = Int64(i("measured_nanos"))
        messages = u("messages")
        bytesSent = u("bytes_sent")
        bytesReceived = u("bytes_received")
        totalBytesSent = u("total_bytes_sent")
        totalBytesReceived = u("total_bytes_received")
        scheduled = u("scheduled")
        mismatches = i("mismatches")
        shortReads = i("short_reads")
        prematureCloses = i("premature_closes")
        timeouts = i("timeouts")
        ioErrors = counts("io_errors")
        if let wirePairs = json["latency"]?.arrayValue {
            let pairs: [(UInt64, UInt64)] = wirePairs.compactMap { p in
                guard let a = p.arrayValue, a.count == 2, let v = a[0].intValue, let c = a[1].intValue, v > 0, c > 0
                else { return nil }
                return (UInt64(v), UInt64(c))
            }
            latency = Latency.histogram(
                pairs: pairs, min: UInt64(max(1, json["latency_min"]?.intValue ?? 1)),
                max: UInt64(max(1, json["latency_max"]?.intValue ?? Int64(Latency.highest))))
        }
        firstFault = json["first_fault"]?.stringValue
        issued = u("issued")
        holdNanos = Int64(i("hold_nanos"))
        interruptedBy = Int32(truncatingIfNeeded: json["interrupted_by"]?.intValue ?? 0)
        largestWrite = i("largest_write")
        unanswered = i("unanswered")
        closedByServer = i("closed_by_server")
        connectTimeline = (json["connect_timeline"]?.arrayValue ?? []).map { Int($0.intValue ?? 0) }
        if let series = json["intervals"] { intervals = IntervalSeries(wire: series) }
    }
}

/// The child's side of the protocol's control messages.
enum ChildProtocol {
    static func message(_ type: String, at t: Int64, signal: Int32? = nil) -> String {
        var members: [(String, JSONValue)] = [("type", .string(type)), ("at", .int(t))]
        if let signal { members.append(("signal", .int(Int64(signal)))) }
        return JSONValue.object(members).text + "\n"
    }

    /// Says `armed`, then follows the parent's messages until EOF (the parent is gone, or done
    /// with this child: a stop either way, which changes nothing once the run is over).
    static func follow(_ reader: LineReader, _ control: RunControl) {
        writeAll(1, #"{"type":"armed"}"# + "\n")
        while let line = reader.next() {
            guard let json = try? JSONValue(parsing: line), let at = json["at"]?.intValue else { continue }
            switch json["type"]?.stringValue {
            case "connect": control.connectGate.open(at)
            case "start": control.start(at: at)
            case "stop": control.stop(at: at, signal: Int32(truncatingIfNeeded: json["signal"]?.intValue ?? 0))
            case "release": control.release(at: at)
            case "ramp":
                if control.rampReason.withLock({ $0 == nil }) {
                    control.rampReason.withLock { $0 = json["reason"]?.stringValue }
                }
                control.openRamp(at: at)
            default: break
            }
        }
        control.stop(at: monotonicNanoseconds(), signal: 0)
    }
}

extension IntervalSeries {
    /// `[length, [[messages, sent, received, faults, closed, min, max, [[value, count], ...]], ...]]`.
    var wireJSON: JSONValue {
        guard length > 0 else { return .null }
        func n(_ v: UInt64) -> JSONValue { .int(Int64(clamping: v)) }
        return .array([.int(length), .array(intervals.map { f in
            .array([n(f.messages), n(f.bytesSent), n(f.bytesReceived), n(f.faults), n(f.closed), n(f.latencyMin),
                    n(f.latencyMax), .array(f.latency.map { .array([n($0.0), n($0.1)]) })])
        })])
    }

    /// Reads what `wireJSON` wrote; anything malformed reads as no series.
    init(wire json: JSONValue) {
        self.init()
        guard let a = json.arrayValue, a.count == 2, let length = a[0].intValue, length > 0,
            let list = a[1].arrayValue
        else { return }
        self.length = length
        func u(_ v: JSONValue) -> UInt64 { UInt64(max(0, v.intValue ?? 0)) }
        intervals = list.map { item in
            var f = IntervalFigures()
            guard let x = item.arrayValue, x.count == 8 else { return f }
            f.messages = u(x[0])
            f.bytesSent = u(x[1])
            f.bytesReceived = u(x[2])
            f.faults = u(x[3])
            f.closed = u(x[4])
            f.latencyMin = u(x[5])
            f.latencyMax = u(x[6])
            f.latency = (x[7].arrayValue ?? []).compactMap { p in
                guard let pair = p.arrayValue, pair.count == 2 else { return nil }
                let (v, c) = (u(pair[0]), u(pair[1]))
                return v > 0 && c > 0 ? (v, c) : nil
            }
            return f
        }
    }
}
