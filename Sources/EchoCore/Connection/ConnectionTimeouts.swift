// SPDX-License-Identifier: Apache-2.0
// IdleTimeoutSec= and SendTimeoutSec= (issue 13, items 4 and 5): a connection that neither
// sends nor receives for the idle timeout is closed, and so is one whose echo has made no
// progress against a full send buffer for the send timeout (a peer that writes and never reads).
//
// How each model enforces them:
// - thread and fork: SO_RCVTIMEO and SO_SNDTIMEO on the connection (socket(7)), set when the
//   connection is taken, so the blocking read(2) or send(2) returns EAGAIN after the timeout
//   and the connection ends. A send that moves some bytes restarts the kernel's timer, so the
//   send timeout measures a stall, not a slow transfer.
// - event: a coarse sweep per worker (no timer per connection, nothing on the echo path but a
//   store): every sweep interval, each connection's count of sweeps without progress goes up,
//   and the echo path resets it; past the count that covers the timeout, the connection is
//   closed. The count lives in the entry's `link`, unused while a connection is echoing, so
//   the entry stays 32 bytes.
//
// The settings are process-wide and read when a connection is taken (thread, fork) or at each
// sweep (event), so a reload applies them to new connections in every model, and in the event
// model to open connections too. A fork child keeps what it was forked with. The counts live in
// a shared anonymous mapping, so fork children's timeouts reach the parent's STATUS=.
import CEchoShims
import Glibc
import Logging
import Synchronization

/// The connection timeouts in force, and how many connections each has closed.
public final class ConnectionTimeouts: Sendable {
    /// The settings and counters of this process (and its fork children's counts).
    public static let shared = ConnectionTimeouts()

    /// `IdleTimeoutSec=` in milliseconds; 0 is off.
    private let idle = Atomic<Int>(0)
    /// `SendTimeoutSec=` in milliseconds; 0 is off.
    private let send = Atomic<Int>(Int(Configuration.defaultSendTimeout.components.seconds) * 1000)
    /// Two counters, idle then send, in a MAP_SHARED page: fork children add to them too.
    private nonisolated(unsafe) let counts: UnsafeMutablePointer<UInt64>

    private init() {
        let page = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        // Without the mapping (ENOMEM at start), count in private memory: fork children's
        // timeouts then go uncounted, nothing else changes.
        if let page, page != MAP_FAILED {
            counts = page.bindMemory(to: UInt64.self, capacity: 2)
        } else {
            counts = .allocate(capacity: 2)
        }
        counts.initialize(repeating: 0, count: 2)
    }

    /// Takes the timeouts of `configuration`; connections taken from now on use them.
    public func update(from configuration: Configuration) {
        idle.store(Self.milliseconds(configuration.idleTimeout), ordering: .relaxed)
        send.store(Self.milliseconds(configuration.sendTimeout), ordering: .relaxed)
    }

    private static func milliseconds(_ duration: Duration?) -> Int {
        guard let duration else { return 0 }
        // At least 1 ms, so a tiny timeout does not read as "off".
        return max(1, Int(nanoseconds(duration) / 1_000_000))
    }

    /// The idle timeout in milliseconds, 0 when off.
    public var idleMilliseconds: Int { idle.load(ordering: .relaxed) }
    /// The send timeout in milliseconds, 0 when off.
    public var sendMilliseconds: Int { send.load(ordering: .relaxed) }

    /// Connections closed by the idle timeout, in every model (fork children included).
    public var idleClosed: UInt64 { CEchoShims_atomic_load_u64(counts) }
    /// Connections closed by the send timeout, in every model (fork children included).
    public var sendClosed: UInt64 { CEchoShims_atomic_load_u64(counts + 1) }

    /// Counts connections closed by the idle timeout.
    public func countIdle(_ n: UInt64 = 1) { CEchoShims_atomic_add_u64(counts, n) }
    /// Counts connections closed by the send timeout.
    public func countSend(_ n: UInt64 = 1) { CEchoShims_atomic_add_u64(counts + 1, n) }

    /// What was last logged, so that the daemon logs the timeouts of every model (fork children
    /// included) with their counts at each STATUS= refresh that has new ones: at most one line
    /// every 2 s, never one per connection.
    public struct LogState {
        private var idle: UInt64 = 0
        private var send: UInt64 = 0

        public init() {}

        /// Logs the connections closed by each timeout since the last call, if there are any.
        public mutating func logIfChanged(_ logger: Logger) {
            let timeouts = ConnectionTimeouts.shared
            let (idleNow, sendNow) = (timeouts.idleClosed, timeouts.sendClosed)
            guard idleNow != idle || sendNow != send else { return }
            logger.info(
                "closed connections past their timeouts",
                metadata: [
                    "timeouts.idle": "\(idleNow &- idle)", "timeouts.send": "\(sendNow &- send)",
                    "timeouts.idle.total": "\(idleNow)", "timeouts.send.total": "\(sendNow)",
                ])
            (idle, send) = (idleNow, sendNow)
        }
    }

    /// `, timeouts: N idle, M send` for `STATUS=`.
    public var statusSuffix: String { ", timeouts: \(idleClosed) idle, \(sendClosed) send" }

    /// Sets SO_RCVTIMEO to the idle timeout and SO_SNDTIMEO to the send timeout on a blocking
    /// connection (thread and fork models). A failure leaves that timeout off for this
    /// connection; it cannot fail on a valid socket.
    ///
    /// The corresponding C function is `setsockopt(2)`.
    public func apply(to fd: Int32) {
        for (option, ms) in [(SO_RCVTIMEO, idleMilliseconds), (SO_SNDTIMEO, sendMilliseconds)] {
            var value = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
            _ = setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// Whether `fd` is in blocking mode, so that EAGAIN from it means a SO_RCVTIMEO or
    /// SO_SNDTIMEO timeout rather than "try again".
    static func isBlocking(_ fd: Int32) -> Bool {
        fcntl(fd, F_GETFL) & O_NONBLOCK == 0
    }

    /// Bytes in `fd`'s send queue the peer has not yet taken (SIOCOUTQ); Int.max when unknown.
    static func unsentBytes(_ fd: Int32) -> Int {
        let n = CEchoShims_unsent_bytes(fd)
        return n < 0 ? Int.max : Int(n)
    }

    /// How often an event worker sweeps, in milliseconds, for the timeouts in force: a quarter
    /// of the shorter one, from 100 ms to 1 s; nil when both are off.
    /// Called on every turn of a worker's loop: two atomic loads, no allocation.
    public func sweepIntervalMilliseconds() -> Int? {
        Self.sweepInterval(idleMilliseconds: idleMilliseconds, sendMilliseconds: sendMilliseconds)
    }

    /// The sweep interval for timeouts in milliseconds (0 = off), or nil when both are off.
    static func sweepInterval(idleMilliseconds idle: Int, sendMilliseconds send: Int) -> Int? {
        let shortest = idle == 0 ? send : (send == 0 ? idle : min(idle, send))
        guard shortest > 0 else { return nil }
        return min(1000, max(100, shortest / 4))
    }

    /// Parses `IdleTimeoutSec=` and `SendTimeoutSec=`: a time span from 1 ms to 24 h, or
    /// `infinity` (or 0) for off.
    static func parse(_ text: String) throws(ConfigurationValueError) -> Duration? {
        if text == "infinity" { return nil }
        guard let micros = ConfigurationValueParser.timeSpanMicroseconds(text), micros <= 86_400_000_000,
            micros == 0 || micros >= 1000
        else {
            throw ConfigurationValueError(
                "expected a time span from 1ms to 24h, or 'infinity' (or 0) for none, e.g. '30s', '5min'")
        }
        return micros == 0 ? nil : .microseconds(micros)
    }

    /// A timeout in the file's syntax: `infinity` when off, whole minutes as `Nmin`.
    static func format(_ duration: Duration?) -> String {
        guard let duration else { return "infinity" }
        let (seconds, attoseconds) = duration.components
        if attoseconds == 0 && seconds % 60 == 0 { return "\(seconds / 60)min" }
        return ConfigurationValueParser.formatTimeSpan(duration)
    }
}

extension ConnectionTable {
    /// One sweep of the event model's timeouts: counts one more sweep without progress for each
    /// echoing connection and collects those past their limit (`idleSweeps` for one with
    /// nothing pending, `sendSweeps` for one waiting to send; 0 = that timeout is off).
    ///
    /// The echo path sets `link` to 0 on progress. The count is at least the timeout's length
    /// in sweep intervals after the last progress, so a connection is closed between the
    /// timeout and the timeout plus one interval after it last moved.
    func sweepTimeouts(idleSweeps: Int32, sendSweeps: Int32, idle: inout [Int32], stalled: inout [Int32]) {
        for i in 0..<highWater {
            let c = base.advanced(by: i)
            guard c.pointee.fd >= 0, c.pointee.phase == .echoing else { continue }
            let sweeps = max(c.pointee.link, 0) + 1
            c.pointee.link = sweeps
            if c.pointee.pending == nil {
                if idleSweeps > 0 && sweeps > idleSweeps { idle.append(Int32(i)) }
            } else if sendSweeps > 0 && sweeps > sendSweeps {
                stalled.append(Int32(i))
            }
        }
    }
}
