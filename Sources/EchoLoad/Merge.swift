// SPDX-License-Identifier: Apache-2.0
// `echoload merge`: the results of runs made on several hosts (or at several times) as one
// report. Each `--json` result carries everything it counted exactly (`exact`: the options and the
// tally, latency histogram included), so the merge adds counts and histograms exactly as a split
// run's parent does; rates are taken over the union of the measured windows, aligned by their
// wall-clock start (`window_start_unix_ns`; start the runs together with `--start-at`).
import EchoCore
import Glibc

public enum RunMerge {
    /// Largest result file read (a result with a full latency histogram is well under 1 MiB).
    public static let maxFileBytes = 64 << 20

    /// One parsed result and where it came from (for messages).
    public struct Input: Sendable {
        public let name: String
        public let json: JSONValue
        public init(name: String, json: JSONValue) {
            self.name = name
            self.json = json
        }
    }

    /// Reads and parses the result in `path` ("-": standard input).
    /// - Throws: `LoadError.usage` naming the file: unreadable, too large, not JSON.
    public static func read(_ path: String) throws(LoadError) -> Input {
        let fd = path == "-" ? 0 : open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw .usage("echoload merge: cannot open \(path): \(SystemError("open", errno: errno).reason)") }
        defer { if fd != 0 { closeNoRetry(fd) } }
        if fd != 0 {
            var st = stat()
            guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
                throw .usage("echoload merge: \(path) is not a regular file")
            }
            _ = fcntl(fd, F_SETFL, 0)
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                throw .usage("echoload merge: cannot read \(path): \(SystemError("read", errno: errno).reason)")
            }
            bytes.append(contentsOf: chunk[0..<n])
            guard bytes.count <= maxFileBytes else {
                throw .usage("echoload merge: \(path) is larger than \(maxFileBytes >> 20) MiB: not an echoload result")
            }
        }
        do {
            return Input(name: path, json: try JSONValue(parsing: String(decoding: bytes, as: UTF8.self)))
        } catch {
            throw .usage("echoload merge: \(path): \(error)")
        }
    }

    /// Merges `inputs` (at least one) into one result.
    /// - Throws: `LoadError.usage` naming the input that is not an echoload result, or that
    ///   measured another workload (mode, message size) than the first.
    public static func merge(_ inputs: [Input]) throws(LoadError) -> LoadResult {
        guard let first = inputs.first else { throw .usage("echoload merge: no results given") }
        var merged: LoadResult?
        var earliest = Int64.max
        var latestStart = Int64.min
        var windowEnd = Int64.min
        var allStarted = true
        for input in inputs {
            let (result, spread) = try decode(input)
            if let start = result.windowStartWall {
                earliest = min(earliest, start)
                latestStart = max(latestStart, start + spread)
                windowEnd = max(windowEnd, start + result.tally.measuredNanos)
            } else {
                allStarted = false
            }
            guard var m = merged else {
                merged = result
                continue
            }
            guard result.options.mode == m.options.mode else {
                throw .usage("echoload merge: \(input.name) is a \(result.options.mode.rawValue) run, \(first.name) a \(m.options.mode.rawValue) run: merge runs of one workload")
            }
            guard result.options.mode == .hold || result.options.size == m.options.size else {
                throw .usage("echoload merge: \(input.name) sent \(result.options.size)-byte messages, \(first.name) \(m.options.size)-byte ones: merge runs of one workload")
            }
            m.options.connections += result.options.connections
            m.options.totalConnections += result.options.totalConnections
            m.options.sources += result.options.sources
            if let r = result.options.rate { m.options.rate = (m.options.rate ?? 0) + r }
            m.options.duration = max(m.options.duration, result.options.duration)
            if m.options.startAt != result.options.startAt { m.options.startAt = nil }
            m.tally.merge(result.tally)
            let base = m.parts.count
            m.parts += result.parts.map { p in
                var p = p
                p.index += base
                return p
            }
            m.workers = max(m.workers, result.workers)
            m.notes += result.notes
            m.startLateNanos = max(m.startLateNanos, result.startLateNanos)
            m.mergedRuns += result.mergedRuns
            merged = m
        }
        guard var m = merged else { throw .usage("echoload merge: no results given") }
        if allStarted && inputs.count > 1 {
            // One window from the earliest start to the latest end: rates over the union.
            m.windowStartWall = earliest
            m.mergedStartSpreadNanos = max(0, latestStart - earliest)
            if m.options.mode != .hold { m.tally.measuredNanos = max(0, windowEnd - earliest) }
        }
        return m
    }

    /// One result back from its JSON, and the spread of the runs it already merges.
    private static func decode(_ input: Input) throws(LoadError) -> (LoadResult, Int64) {
        let j = input.json
        guard j["schema_version"]?.intValue == 1, let exact = j["exact"], let wireOptions = exact["options"],
            let wireTally = exact["tally"]
        else {
            throw .usage("echoload merge: \(input.name) is not an echoload --json result with exact counts (schema_version 1 and an \"exact\" member)")
        }
        var options: LoadOptions
        do {
            options = try LoadOptions(wire: wireOptions)
        } catch {
            throw .usage("echoload merge: \(input.name): malformed \"exact\".\"options\"")
        }
        options.processes = max(1, j["parts"]?.arrayValue?.count ?? 1)
        options.startAt = j["start_at"]?.stringValue.flatMap(WallClock.parse)
        var result = LoadResult(options: options, workers: Int(j["workers"]?.intValue ?? 0),
                                tally: Tally(wire: wireTally), parts: [])
        for p in j["parts"]?.arrayValue ?? [] {
            func i(_ k: String) -> Int { Int(p[k]?.intValue ?? 0) }
            result.parts.append(PartSummary(
                index: i("index"), pid: Int32(truncatingIfNeeded: i("pid")), connections: i("connections"),
                established: i("established"), held: i("held"), messages: UInt64(max(0, i("messages"))),
                faults: i("faults"), exitStatus: Int32(truncatingIfNeeded: i("exit_status"))))
        }
        result.notes = (j["notes"]?.arrayValue ?? []).compactMap { $0.stringValue }.map { "\(input.name): \($0)" }
        result.windowStartWall = j["window_start_unix_ns"]?.intValue
        result.startLateNanos = Int64(((j["start_late_seconds"]?.doubleValue ?? 0) * 1e9).rounded())
        result.mergedRuns = Int(max(1, j["merged"]?["runs"]?.intValue ?? 1))
        let spread = Int64(((j["merged"]?["window_start_spread_seconds"]?.doubleValue ?? 0) * 1e9).rounded())
        return (result, spread)
    }
}
