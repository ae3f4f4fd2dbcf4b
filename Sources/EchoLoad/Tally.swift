// SPDX-License-Identifier: Apache-2.0
// What a run counted, and how partial counts merge (threads → process → parent). The ways a
// connection can go wrong are recorded here, once, for every client model.
import EchoCore
import Histogram

/// Counts from one worker, one process, or a whole run; `merge` adds them up.
public struct Tally: Sendable {
    /// Connections asked for.
    public var requested = 0
    /// Connections whose connect succeeded.
    public var established = 0
    /// Failed connects by errno name (`ECONNREFUSED`, `ETIMEDOUT`, ...).
    public var connectFailures: [String: Int] = [:]
    /// From the first connect started to the last one resolved (max over parts).
    public var connectNanos: Int64 = 0
    /// `hold`: connections that answered their probe after the hold.
    public var held = 0
    /// `hold`: from the run's start (every connection open) to the probes (shortest over parts).
    public var holdNanos: Int64 = 0
    /// Measured period, nanoseconds (max over parts; each part measures the same span).
    public var measuredNanos: Int64 = 0
    /// Messages whose whole echo arrived (pingpong: in the measured period; rate: intended in it).
    public var messages: UInt64 = 0
    /// Payload bytes written / echoed back in the measured period.
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    /// Payload bytes over the whole run (warm-up and drain included).
    public var totalBytesSent: UInt64 = 0
    public var totalBytesReceived: UInt64 = 0
    /// `rate`: messages scheduled in the measured period.
    public var scheduled: UInt64 = 0
    /// `rate`: messages handed to the socket during the measured period (the offered load:
    /// short of `scheduled` when the client cannot keep up).
    public var issued: UInt64 = 0
    /// The signal that interrupted the run (SIGINT, SIGTERM), -1 if a child's parent went away,
    /// 0 for a run that ran its course.
    public var interruptedBy: Int32 = 0
    /// Echoed bytes that differ from what was sent.
    public var mismatches = 0
    /// The peer closed while echo bytes were still owed (mid-message, or mid-stream).
    public var shortReads = 0
    /// The peer closed a connection that owed nothing (while idle, between messages).
    public var prematureCloses = 0
    /// Echoes (or hold probes) still owed when the drain timeout ran out.
    public var timeouts = 0
    /// Read/write failures by errno name (`ECONNRESET`, `EPIPE`, ...).
    public var ioErrors: [String: Int] = [:]
    /// Round-trip latency in nanoseconds (pingpong, rate).
    public var latency: Histogram<UInt64>? = nil
    /// The first fault seen, for the one-line explanation.
    public var firstFault: String? = nil
    /// Figures per interval of the measured window (`--interval`, `--latency-log`).
    public var intervals = IntervalSeries()
    /// The most bytes handed to one send call (at most `--size` except for hold probes: messages
    /// are written one at a time, the rest of a partly sent message in the next call).
    public var largestWrite = 0
    /// max: probes not answered within the drain timeout (the server holds no more: not a fault).
    public var unanswered = 0
    /// max: open connections the server closed or reset during the ramp (its way of refusing).
    public var closedByServer = 0
    /// Connections established in each second since the connect epoch (index 0: the first
    /// second); the epoch is shared by every process, so the parts add up bucket by bucket.
    public var connectTimeline: [Int] = []
    /// `udp`: sent, echoed, lost, duplicated and reordered datagrams of the measured period.
    public var datagrams: DatagramFigures? = nil

    public init() {}

    /// Every fault counted (connect failures excluded).
    public var faults: Int {
        mismatches + shortReads + prematureCloses + timeouts + ioErrors.values.reduce(0, +)
            + Int(datagrams?.duplicates ?? 0)
    }

    public var connectFailed: Int { connectFailures.values.reduce(0, +) }

    /// Adds `other` into `self`: counts add, spans take the maximum, histograms merge exactly.
    public mutating func merge(_ other: Tally) {
        requested += other.requested
        established += other.established
        connectFailures.merge(other.connectFailures, uniquingKeysWith: +)
        connectNanos = max(connectNanos, other.connectNanos)
        held += other.held
        if other.holdNanos > 0 { holdNanos = holdNanos == 0 ? other.holdNanos : min(holdNanos, other.holdNanos) }
        measuredNanos = max(measuredNanos, other.measuredNanos)
        messages += other.messages
        bytesSent += other.bytesSent
        bytesReceived += other.bytesReceived
        totalBytesSent += other.totalBytesSent
        totalBytesReceived += other.totalBytesReceived
        scheduled += other.scheduled
        issued += other.issued
        if interruptedBy == 0 { interruptedBy = other.interruptedBy }
        mismatches += other.mismatches
        shortReads += other.shortReads
        prematureCloses += other.prematureCloses
        timeouts += other.timeouts
        ioErrors.merge(other.ioErrors, uniquingKeysWith: +)
        if let h = other.latency {
            if latency == nil { latency = Latency.makeHistogram() }
            latency!.add(h)
        }
        if firstFault == nil { firstFault = other.firstFault }
        intervals.merge(other.intervals)
        largestWrite = max(largestWrite, other.largestWrite)
        unanswered += other.unanswered
        closedByServer += other.closedByServer
        if connectTimeline.count < other.connectTimeline.count {
            connectTimeline += [Int](repeating: 0, count: other.connectTimeline.count - connectTimeline.count)
        }
        for (i, n) in other.connectTimeline.enumerated() { connectTimeline[i] += n }
        if let d = other.datagrams {
            var mine = datagrams ?? DatagramFigures()
            mine.sent += d.sent
            mine.echoed += d.echoed
            mine.lost += d.lost
            mine.duplicates += d.duplicates
            mine.reordered += d.reordered
            datagrams = mine
        }
    }

    /// Counts one connection established at `now`, `epoch` being the connect epoch.
    mutating func noteEstablished(at now: Int64, epoch: Int64) {
        let second = Int(max(0, now - epoch) / 1_000_000_000)
        // Bounded: a connect epoch more than a day old would mean a broken clock, not a long ramp.
        guard second < 86_400 else { return }
        if second >= connectTimeline.count {
            connectTimeline += [Int](repeating: 0, count: second + 1 - connectTimeline.count)
        }
        connectTimeline[second] += 1
    }
}

// MARK: - Recording faults (one wording for every client model)

extension Tally {
    /// Keeps `text` as the first fault's explanation unless one is already kept.
    mutating func noteFault(_ text: @autoclosure () -> String) {
        if firstFault == nil { firstFault = text() }
    }

    /// Echoed byte `position` of connection `connection` is `got` where `expected` was sent.
    mutating func recordMismatch(connection: Int, position: UInt64, got: UInt8, expected: UInt8) {
        mismatches += 1
        noteFault("connection \(connection): byte \(position) of the echo is \(got), sent \(expected)")
    }

    /// More echo bytes arrived (`received` in all) than were sent.
    mutating func recordOverrun(connection: Int, received: UInt64, sent: UInt64) {
        mismatches += 1
        noteFault("connection \(connection): received \(received) bytes but sent only \(sent)")
    }

    /// Bytes arrived after the whole echo (`sent` bytes, all echoed).
    mutating func recordTrailingBytes(connection: Int, sent: UInt64) {
        mismatches += 1
        noteFault("connection \(connection): bytes arrived after the whole echo (\(sent) bytes sent)")
    }

    /// The peer closed: mid-echo (a short read) or while owing nothing (a premature close).
    mutating func recordPeerClose(connection: Int, received: UInt64, sent: UInt64) {
        if received < sent {
            shortReads += 1
            noteFault("connection \(connection): peer closed with \(sent - received) echo bytes owed (\(received) of \(sent) back)")
        } else {
            prematureCloses += 1
            noteFault("connection \(connection): peer closed the connection after \(received) bytes")
        }
    }

    /// No echo within the drain timeout.
    mutating func recordEchoTimeout(connection: Int, received: UInt64, sent: UInt64) {
        timeouts += 1
        noteFault("connection \(connection): no echo within the drain timeout (\(received) of \(sent) bytes back)")
    }

    /// A blocking send stayed blocked past the drain timeout (the peer stopped reading).
    mutating func recordSendTimeout(connection: Int) {
        timeouts += 1
        noteFault("connection \(connection): send blocked longer than the drain timeout")
    }

    /// recv/send failed with `errno`.
    mutating func recordIOError(connection: Int, errno e: Int32) {
        ioErrors[errnoName(e), default: 0] += 1
        noteFault("connection \(connection): \(SystemError("recv/send", errno: e))")
    }
}

// MARK: - Counting echoed messages (one rule for every client model)

/// The measured window: `[start, end)` in CLOCK_MONOTONIC nanoseconds.
struct MeasuredWindow {
    var start: Int64
    var end: Int64

    @inline(__always) func contains(_ t: Int64) -> Bool { t >= start && t < end }
}

/// rate: where a connection's byte stream skips schedule messages. When the measured window opens
/// with messages of the warm-up not yet handed out (the client is past saturation), they are
/// dropped, never sent: the window measures what is intended in it, not the warm-up's backlog.
/// The stream stays contiguous, so the message at stream offset `o` is `o / size` before
/// `from` and `o / size + count` from there on.
struct RateSkip {
    /// Stream offset (a multiple of the message size) where the skip happens; `.max`: none.
    var from: UInt64 = .max
    /// Schedule messages skipped there.
    var count: UInt64 = 0

    /// The schedule message of the stream's `m`-th message of `size` bytes.
    @inline(__always) func message(_ m: UInt64, size: UInt64) -> UInt64 {
        m * size >= from ? m + count : m
    }
}

/// The `rate` schedule, one for the whole run: message `m` of connection `g` (global index, of
/// `connections` in the whole run, over every worker and process) is intended at
/// `start + (m × connections + g) × spacing`, so that consecutive messages of the run are
/// `spacing` nanoseconds apart whichever worker or process sends them.
struct RateSchedule {
    var start: Int64
    /// Nanoseconds between consecutive messages of the whole schedule (1e9 / rate).
    var spacing: Double
    var connections: Int

    /// Intended time of connection `g`'s message `m`.
    @inline(__always) func intended(connection g: Int, message m: UInt64) -> Int64 {
        start + Int64((Double(m) * Double(connections) + Double(g)) * spacing)
    }

    /// The first message of connection `g` intended at or after `t`.
    func firstMessage(connection g: Int, atOrAfter t: Int64) -> UInt64 {
        let estimate = (Double(t - start) / spacing - Double(g)) / Double(connections)
        var m = UInt64(max(0, estimate.rounded(.down) - 1))
        while intended(connection: g, message: m) < t { m += 1 }
        return m
    }

    /// How many of the messages of connections `connections` (global indices) are intended in
    /// `window`: the `scheduled` count, whether or not the client kept up.
    func scheduled(connections range: Range<Int>, in window: MeasuredWindow) -> UInt64 {
        guard window.end > window.start else { return 0 }
        var n: UInt64 = 0
        for g in range {
            n += firstMessage(connection: g, atOrAfter: window.end) - firstMessage(connection: g, atOrAfter: window.start)
        }
        return n
    }
}

extension Tally {
    /// One whole echo of `size` bytes arrived `latency` nanoseconds after it was sent (or
    /// intended), and it counts in the measured window.
    @inline(__always)
    mutating func countMessage(size: Int, latency: Int64, at now: Int64, into sink: inout LatencySink) {
        messages += 1
        bytesSent += UInt64(size)
        bytesReceived += UInt64(size)
        Latency.record(latency, into: &sink.histogram)
        sink.intervals?.message(size: size, latency: latency, at: now)
    }

    /// rate: connection `k`'s (global index) echo grew from `before` to `after` bytes at `now`; every message
    /// completed by that counts, its latency from its intended send time, if it was intended in
    /// `window`. `skip` maps stream offsets to schedule messages past the warm-up's dropped backlog.
    /// - Returns: how many messages completed (measured or not), for the progress line.
    @inline(__always)
    mutating func countRateEchoes(
        connection k: Int, from before: UInt64, to after: UInt64, size: Int, schedule: RateSchedule,
        skip: RateSkip, window: MeasuredWindow, now: Int64, into sink: inout LatencySink
    ) -> Int {
        let s = UInt64(size)
        var m = before / s
        let done = after / s
        while m < done {
            let intended = schedule.intended(connection: k, message: skip.message(m, size: s))
            // In its intended send time's interval, as the run counts it (by intended time).
            if window.contains(intended) { countMessage(size: size, latency: now - intended, at: intended, into: &sink) }
            m += 1
        }
        return Int(done - before / s)
    }
}
