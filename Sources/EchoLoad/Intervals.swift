// SPDX-License-Identifier: Apache-2.0
// Figures per interval of the measured window (`--interval`, `--latency-log`): messages, bytes,
// faults, connections closed and a latency histogram for each interval [start + k×len,
// start + (k+1)×len). Each event worker and each thread-model stripe keeps one recorder; a
// finished interval's histogram is kept compact (its non-empty buckets) and the working one is
// reset, so memory grows with the intervals' distinct latencies, not with the run's length
// times the histogram's size. Recorders merge by interval index, exactly (histograms bucket by
// bucket), across workers and processes, like every other count. A sample counts in the
// interval it is recorded in: a ping-pong message when its echo completes, a `rate` message at
// its intended send time (the time its latency and the run's count are taken from), bytes when
// they move.
import Histogram

/// One interval's figures.
public struct IntervalFigures: Sendable, Equatable {
    public var messages: UInt64 = 0
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    public var faults: UInt64 = 0
    /// Connections that ended in the interval (for any reason).
    public var closed: UInt64 = 0
    /// Latency samples as (bucket value, count), plus the exact extremes.
    public var latency: [(UInt64, UInt64)] = []
    public var latencyMin: UInt64 = 0
    public var latencyMax: UInt64 = 0

    public init() {}

    public static func == (a: Self, b: Self) -> Bool {
        a.messages == b.messages && a.bytesSent == b.bytesSent && a.bytesReceived == b.bytesReceived
            && a.faults == b.faults && a.closed == b.closed && a.latencyMin == b.latencyMin
            && a.latencyMax == b.latencyMax && a.latency.elementsEqual(b.latency, by: { $0 == $1 })
    }

    /// The interval's latency histogram.
    public var histogram: Histogram<UInt64> {
        Latency.histogram(pairs: latency, min: latencyMin, max: latencyMax)
    }

    mutating func add(_ o: IntervalFigures) {
        messages += o.messages
        bytesSent += o.bytesSent
        bytesReceived += o.bytesReceived
        faults += o.faults
        closed += o.closed
        if !o.latency.isEmpty {
            var h = histogram
            h.add(o.histogram)
            self.setLatency(h)
        }
    }

    mutating func setLatency(_ h: Histogram<UInt64>) {
        guard h.totalCount > 0 else {
            latency = []
            latencyMin = 0
            latencyMax = 0
            return
        }
        latency = h.recordedValues().map { ($0.value, UInt64($0.count)) }
        latencyMin = h.min
        latencyMax = h.maxRecorded
    }
}

/// The per-interval series of one worker, stripe, process or run.
public struct IntervalSeries: Sendable, Equatable {
    /// Interval length, nanoseconds (0: no series).
    public var length: Int64 = 0
    public var intervals: [IntervalFigures] = []

    public init() {}

    public init(length: Int64) { self.length = length }

    /// Adds `other` interval by interval.
    public mutating func merge(_ other: IntervalSeries) {
        guard other.length > 0 else { return }
        if length == 0 { length = other.length }
        if intervals.count < other.intervals.count {
            intervals += Array(repeating: IntervalFigures(), count: other.intervals.count - intervals.count)
        }
        for (k, f) in other.intervals.enumerated() { intervals[k].add(f) }
    }
}

/// Records into the intervals of one measured window. Not thread-safe: one per event worker,
/// one per stripe (under its lock) in the thread model.
struct IntervalRecorder: Sendable {
    let start: Int64
    private(set) var end: Int64
    let length: Int64
    private var index = 0
    private var current = IntervalFigures()
    private var working = Latency.makeHistogram()
    private(set) var series: IntervalSeries

    init(window: MeasuredWindow, length: Int64) {
        start = window.start
        end = window.end
        self.length = max(1, length)
        series = IntervalSeries(length: self.length)
    }

    /// The interval of time `t`, or nil outside the window.
    @inline(__always) private func slot(_ t: Int64) -> Int? {
        guard t >= start && t < end else { return nil }
        return Int((t - start) / length)
    }

    /// Moves to interval `k`, closing the current one (and any empty ones between).
    private mutating func roll(to k: Int) {
        guard k != index else { return }
        finishCurrent()
        index = k
    }

    private mutating func finishCurrent() {
        let isEmpty = current == IntervalFigures() && working.totalCount == 0
        if !isEmpty {
            current.setLatency(working)
            if series.intervals.count <= index {
                series.intervals += Array(repeating: IntervalFigures(), count: index + 1 - series.intervals.count)
            }
            series.intervals[index].add(current)
            working.reset()
            current = IntervalFigures()
        }
    }

    /// The window ended early (a stop) at `t`: nothing later counts.
    public mutating func endWindow(at t: Int64) { end = min(end, max(start, t)) }

    public mutating func message(size: Int, latency: Int64, at t: Int64) {
        guard let k = slot(t) else { return }
        roll(to: k)
        current.messages += 1
        current.bytesSent += UInt64(size)
        current.bytesReceived += UInt64(size)
        Latency.record(latency, into: &working)
    }

    public mutating func bytes(sent: Int = 0, received: Int = 0, at t: Int64) {
        guard let k = slot(t) else { return }
        roll(to: k)
        current.bytesSent += UInt64(sent)
        current.bytesReceived += UInt64(received)
    }

    public mutating func fault(at t: Int64) {
        guard let k = slot(t) else { return }
        roll(to: k)
        current.faults += 1
    }

    public mutating func closed(at t: Int64) {
        guard let k = slot(t) else { return }
        roll(to: k)
        current.closed += 1
    }

    /// Everything recorded, the current interval included; the window's every interval is
    /// present (empty ones as zeros) up to `until` (the window's end, or a stop).
    public mutating func finish(until t: Int64) -> IntervalSeries {
        finishCurrent()
        let last = Int((min(t, end) - start + length - 1) / length)
        if last > series.intervals.count {
            series.intervals += Array(repeating: IntervalFigures(), count: last - series.intervals.count)
        }
        return series
    }
}

/// Round-trip latencies into the run's histogram, and into the interval recorder if one runs.
struct LatencySink: Sendable {
    public var histogram = Latency.makeHistogram()
    public var intervals: IntervalRecorder?

    public init() {}
}

extension LoadResult {
    /// The per-interval series for `--json`, or null without `--interval`.
    var intervalsJSON: JSONValue {
        let series = tally.intervals
        guard series.length > 0 else { return .null }
        let seconds = Double(series.length) / 1e9
        func r3(_ d: Double) -> JSONValue { .double((d * 1000).rounded() / 1000) }
        func us(_ v: UInt64) -> JSONValue { r3(Double(v) / 1000) }
        return .object([
            ("seconds", r3(seconds)),
            ("series", .array(series.intervals.enumerated().map { k, f in
                let h = f.histogram
                let has = h.totalCount > 0
                return .object([
                    ("start_seconds", r3(Double(k) * seconds)),
                    ("messages", .int(Int64(clamping: f.messages))),
                    ("messages_per_second", r3(Double(f.messages) / seconds)),
                    ("bytes_sent", .int(Int64(clamping: f.bytesSent))),
                    ("bytes_received", .int(Int64(clamping: f.bytesReceived))),
                    ("megabytes_per_second_received", r3(Double(f.bytesReceived) / seconds / 1e6)),
                    ("faults", .int(Int64(clamping: f.faults))),
                    ("closed", .int(Int64(clamping: f.closed))),
                    ("p50_us", has ? us(h.valueAtPercentile(50)) : .null),
                    ("p99_us", has ? us(h.valueAtPercentile(99)) : .null),
                    ("max_us", has ? us(h.max) : .null),
                ])
            })),
        ])
    }

    /// One line for the table: the spread of the per-interval rates and the worst p99.
    var intervalsLine: String? {
        let series = tally.intervals
        guard series.length > 0, !series.intervals.isEmpty else { return nil }
        let seconds = Double(series.length) / 1e9
        let byMessages = options.mode != .stream
        let rates = series.intervals.map { byMessages ? Double($0.messages) / seconds : Double($0.bytesReceived) / seconds / 1e6 }
        var line = "intervals    \(series.intervals.count) × \(formatFixed(seconds, 3)) s: "
            + (byMessages ? "msg/s" : "MB/s") + " \(formatFixed(rates.min() ?? 0, byMessages ? 0 : 2))"
            + " to \(formatFixed(rates.max() ?? 0, byMessages ? 0 : 2))"
        let p99s = series.intervals.map(\.histogram).filter { $0.totalCount > 0 }.map { Double($0.valueAtPercentile(99)) / 1000 }
        if let worst = p99s.max() { line += ", worst p99 \(formatFixed(worst, 1)) µs" }
        let faults = series.intervals.reduce(0) { $0 + $1.faults }
        if faults > 0 { line += ", faults in \(series.intervals.filter { $0.faults > 0 }.count) intervals" }
        return line
    }

    /// The per-interval latency histograms as an HdrHistogram interval log (format 1.3, values in
    /// nanoseconds, Interval_Max in milliseconds), readable by HistogramLogAnalyzer and every
    /// HistogramLogReader. Timestamps are seconds from the measured window's start (StartTime).
    public var latencyLog: String {
        let series = tally.intervals
        let start = Double(windowStartWall ?? 0) / 1e9
        var text = "#[Histogram log format version 1.3]\n"
        text += "#[StartTime: \(formatFixed(start, 3)) (seconds since epoch), \(WallClock.format(windowStartWall ?? 0))]\n"
        text += "#[echoload \(options.mode.rawValue) \(options.target) -c \(options.connections) --size \(options.size); latencies in nanoseconds]\n"
        text += "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n"
        let seconds = Double(series.length) / 1e9
        for (k, f) in series.intervals.enumerated() {
            let h = f.histogram
            text += "\(formatFixed(Double(k) * seconds, 3)),\(formatFixed(seconds, 3)),"
                + "\(formatFixed(Double(h.totalCount > 0 ? h.max : 0) / 1e6, 3)),\(HistogramCodec.encode(h))\n"
        }
        return text
    }
}
