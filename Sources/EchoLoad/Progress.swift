// SPDX-License-Identifier: Apache-2.0
// The once-a-second progress line: running totals workers add to (event workers once per loop
// turn, connection threads per event), snapshots of them, and the reporter that prints them
// (or, in a child process, sends them to the parent).
import EchoCore
import Glibc
import Synchronization

/// Totals of one process, shared by its workers.
public final class LiveCounters: Sendable {
    public let established = Atomic<Int>(0)
    public let failed = Atomic<Int>(0)
    public let open = Atomic<Int>(0)
    public let held = Atomic<Int>(0)
    /// Messages whose echo arrived whole (warm-up included).
    public let messages = Atomic<Int>(0)
    public let bytesSent = Atomic<Int>(0)
    public let bytesReceived = Atomic<Int>(0)
    public let faults = Atomic<Int>(0)

    public init() {}

    public var snapshot: ProgressSnapshot {
        ProgressSnapshot(
            established: established.load(ordering: .relaxed), failed: failed.load(ordering: .relaxed),
            open: open.load(ordering: .relaxed), held: held.load(ordering: .relaxed),
            messages: messages.load(ordering: .relaxed), bytesSent: bytesSent.load(ordering: .relaxed),
            bytesReceived: bytesReceived.load(ordering: .relaxed), faults: faults.load(ordering: .relaxed))
    }
}

/// One reading of the live counters (or a sum of several processes' readings).
public struct ProgressSnapshot: Sendable, Equatable {
    public var established = 0, failed = 0, open = 0, held = 0
    public var messages = 0, bytesSent = 0, bytesReceived = 0, faults = 0

    public init() {}

    init(established: Int, failed: Int, open: Int, held: Int, messages: Int, bytesSent: Int, bytesReceived: Int, faults: Int) {
        self.established = established
        self.failed = failed
        self.open = open
        self.held = held
        self.messages = messages
        self.bytesSent = bytesSent
        self.bytesReceived = bytesReceived
        self.faults = faults
    }

    public static func + (a: Self, b: Self) -> Self {
        ProgressSnapshot(
            established: a.established + b.established, failed: a.failed + b.failed, open: a.open + b.open,
            held: a.held + b.held, messages: a.messages + b.messages, bytesSent: a.bytesSent + b.bytesSent,
            bytesReceived: a.bytesReceived + b.bytesReceived, faults: a.faults + b.faults)
    }

    var wireJSON: JSONValue {
        .object([
            ("type", .string("progress")), ("established", .int(Int64(established))), ("failed", .int(Int64(failed))),
            ("open", .int(Int64(open))), ("held", .int(Int64(held))), ("messages", .int(Int64(messages))),
            ("bytes_sent", .int(Int64(bytesSent))), ("bytes_received", .int(Int64(bytesReceived))),
            ("faults", .int(Int64(faults))),
        ])
    }

    init(wire j: JSONValue) {
        func i(_ k: String) -> Int { Int(j[k]?.intValue ?? 0) }
        self.init(
            established: i("established"), failed: i("failed"), open: i("open"), held: i("held"),
            messages: i("messages"), bytesSent: i("bytes_sent"), bytesReceived: i("bytes_received"), faults: i("faults"))
    }

    /// The progress line: `elapsed`, this reading, and the previous one (for per-second rates).
    public func line(elapsedSeconds: Int, previous: ProgressSnapshot, requested: Int) -> String {
        var s = "[\(elapsedSeconds)s] conns \(open) open, \(established)/\(requested) established, \(failed) failed"
        if held > 0 { s += ", \(held) held" }
        let msgs = messages - previous.messages
        if messages > 0 { s += " | \(msgs) msg/s" }
        let sent = bytesSent - previous.bytesSent
        let received = bytesReceived - previous.bytesReceived
        if bytesSent > 0 {
            s += " | \(formatFixed(Double(sent) / 1e6, 1)) MB/s out, \(formatFixed(Double(received) / 1e6, 1)) MB/s in"
        }
        s += " | errors \(faults)"
        return s
    }
}

/// The once-a-second progress line: redrawn in place on a terminal, plain lines otherwise, or
/// JSON lines to the parent in a child process. Used by one thread at a time.
public final class ProgressReporter: @unchecked Sendable {
    // @unchecked: begin/report/end are called by one thread at a time (the sampler thread, or the
    // process driver's loop), and `end` runs after the sampler is joined.
    public enum Style: Sendable { case none, lines, terminal, childPipe }

    let style: Style
    private var started: Int64 = 0
    private var lastPrinted: Int64 = 0
    private var previous = ProgressSnapshot()
    private var drewInPlace = false

    public init(style: Style) { self.style = style }

    /// `.terminal` if stderr is a TTY, else `.lines`.
    public static func forStderr(quiet: Bool) -> ProgressReporter {
        ProgressReporter(style: quiet ? .none : (isatty(2) == 1 ? .terminal : .lines))
    }

    func begin() {
        started = monotonicNanoseconds()
        lastPrinted = started
    }

    func report(_ s: ProgressSnapshot, requested: Int) {
        let now = monotonicNanoseconds()
        guard now - lastPrinted >= 1_000_000_000 else { return }
        lastPrinted = now
        switch style {
        case .none: break
        case .childPipe: writeAll(1, s.wireJSON.text + "\n")
        case .lines:
            writeAll(2, "echoload: " + s.line(elapsedSeconds: Int((now - started) / 1_000_000_000), previous: previous, requested: requested) + "\n")
        case .terminal:
            writeAll(2, "\r\u{1B}[K" + s.line(elapsedSeconds: Int((now - started) / 1_000_000_000), previous: previous, requested: requested))
            drewInPlace = true
        }
        previous = s
    }

    func end() {
        if drewInPlace {
            writeAll(2, "\r\u{1B}[K")
            drewInPlace = false
        }
    }
}
