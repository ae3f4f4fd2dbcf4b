// SPDX-License-Identifier: Apache-2.0

import EchoBuildInfo
import Glibc
import Logging

/// The figures of `STATUS=` as a Prometheus text-format file (exposition format 0.0.4), for
/// node_exporter's textfile collector or any scraper that reads files.
///
/// The file is replaced atomically: the text goes to a temporary file in the same directory,
/// which is then renamed over the old one, so a reader sees the previous file or the new one,
/// never a part. It is rewritten with every `STATUS=` line (every two seconds).
public struct MetricsFile: Sendable {
    /// The file written, e.g. `/run/echod/echod.prom`.
    public let path: String
    private let temporaryPath: String

    /// The file name echod writes in systemd's `RuntimeDirectory=`.
    public static let fileName = "echod.prom"

    public init(path: String) {
        self.path = path
        // Not ending in ".prom": the textfile collector reads only *.prom, never the half-written file.
        temporaryPath = path + ".tmp"
    }

    /// The file in `$RUNTIME_DIRECTORY` (set by systemd for `RuntimeDirectory=`), if set; the
    /// first directory when it lists several.
    public static func inRuntimeDirectory(environment: [String: String]) -> MetricsFile? {
        guard let dirs = environment["RUNTIME_DIRECTORY"],
            let dir = dirs.split(separator: ":").first, !dir.isEmpty
        else { return nil }
        return MetricsFile(path: "\(dir)/\(fileName)")
    }

    /// Writes `text` to the temporary file and renames it over `path`.
    public func replace(with text: String) throws(SystemError) {
        // 0644 whatever the umask (the unit's UMask=0077): a scraper under another user reads it.
        let fd = Glibc.open(temporaryPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
        if fd < 0 { throw SystemError("open(\(temporaryPath))", errno: errno) }
        let file = FileDescriptor(owning: fd)
        if fchmod(file.rawValue, 0o644) != 0 { throw SystemError("fchmod(\(temporaryPath))", errno: errno) }
        var text = text
        let failed: Int32 = text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = Glibc.write(file.rawValue, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                offset += n
            }
            return 0
        }
        if failed != 0 { throw SystemError("write(\(temporaryPath))", errno: failed) }
        file.close()
        if Glibc.rename(temporaryPath, path) != 0 { throw SystemError("rename(\(temporaryPath), \(path))", errno: errno) }
    }

    /// Removes the file (and a temporary one left behind), at stop: a scraper must not keep
    /// reporting figures of a daemon that is gone.
    public func remove() {
        _ = unlink(path)
        _ = unlink(temporaryPath)
    }

    /// The exposition text for one snapshot.
    ///
    /// - Parameters:
    ///   - snapshot: the model's counters.
    ///   - model: `event`, `thread` or `fork` (a label of `echod_info`).
    ///   - version: echod's version (a label of `echod_info`).
    ///   - startTime: when echod started, in seconds since the epoch.
    ///   - idleTimeouts, sendTimeouts: connections closed by `IdleTimeoutSec=` and `SendTimeoutSec=`.
    ///   - refusals: connections refused by the per-source limits, by reason.
    public static func render(
        _ snapshot: ServerSnapshot, model: String, version: String, startTime: Double,
        idleTimeouts: UInt64 = 0, sendTimeouts: UInt64 = 0, refusals: SourceTable.Refusals = .init()
    ) -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: String, labels: String = "") {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name)\(labels) \(value)\n"
        }
        metric(
            "echod_info", "gauge", "echod's version and serving model (always 1).", "1",
            labels: "{version=\"\(escapeLabel(version))\",model=\"\(escapeLabel(model))\"}")
        metric("echod_start_time_seconds", "gauge", "When echod started, in seconds since the epoch.",
               formatSeconds(startTime))
        metric("echod_connections_open", "gauge", "Connections open now.", "\(snapshot.open)")
        metric("echod_connections_accepted_total", "counter", "Connections accepted since start.",
               "\(snapshot.accepted)")
        metric("echod_echoed_bytes_total", "counter",
               "Bytes written back to clients since start (fork model: children report in batches).",
               "\(snapshot.bytesEchoed)")
        metric("echod_accept_backoffs_total", "counter",
               "Times accepting paused after a resource error (EMFILE, EAGAIN from pthread_create or fork).",
               "\(snapshot.acceptBackoffs)")
        out += "# HELP echod_connections_timed_out_total Connections echod closed at a timeout, by timeout.\n"
        out += "# TYPE echod_connections_timed_out_total counter\n"
        out += "echod_connections_timed_out_total{timeout=\"idle\"} \(idleTimeouts)\n"
        out += "echod_connections_timed_out_total{timeout=\"send\"} \(sendTimeouts)\n"
        out += "# HELP echod_connections_refused_total Connections accepted and closed at once by a per-source limit, by reason.\n"
        out += "# TYPE echod_connections_refused_total counter\n"
        out += "echod_connections_refused_total{reason=\"per_source\"} \(refusals.perSource)\n"
        out += "echod_connections_refused_total{reason=\"rate\"} \(refusals.rate)\n"
        out += "echod_connections_refused_total{reason=\"source_table_full\"} \(refusals.tableFull)\n"
        return out
    }

    /// The UDP echo's figures, or "" when no UDP socket is served.
    public static func renderDatagrams(_ udp: DatagramShared) -> String {
        guard udp.isServing else { return "" }
        var out = ""
        func metric(_ name: String, _ help: String, _ value: UInt64) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) counter\n\(name) \(value)\n"
        }
        metric("echod_udp_datagrams_received_total", "UDP datagrams received since start.", udp.received)
        metric("echod_udp_datagrams_echoed_total", "UDP datagrams echoed since start.", udp.echoed)
        metric("echod_udp_echoed_bytes_total", "Bytes echoed over UDP since start.", udp.bytesEchoed)
        out += "# HELP echod_udp_datagrams_dropped_total UDP datagrams not echoed, by reason.\n"
        out += "# TYPE echod_udp_datagrams_dropped_total counter\n"
        for reason in DatagramDrop.allCases {
            out += "echod_udp_datagrams_dropped_total{reason=\"\(reason.name)\"} \(udp.dropped(reason))\n"
        }
        return out
    }

    /// A label value with `\`, `"` and newlines escaped, as the text format requires.
    static func escapeLabel(_ value: String) -> String {
        var out = ""
        for c in value {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    /// Seconds with millisecond precision, no exponent.
    static func formatSeconds(_ seconds: Double) -> String {
        let millis = Int64((seconds * 1000).rounded())
        let frac = millis % 1000
        return "\(millis / 1000).\(frac < 10 ? "00" : frac < 100 ? "0" : "")\(frac)"
    }
}

/// Keeps the metrics file in step with `STATUS=`: the daemon calls `publish` wherever it sends a
/// `STATUS=` line with the model's figures, and `remove` once it has stopped.
struct MetricsPublisher {
    let file: MetricsFile?
    private let model: String
    private let startTime: Double
    private var warning = RateLimitedWarning()

    /// - Parameters:
    ///   - file: where to write; nil writes nothing (echod not started with `RuntimeDirectory=`).
    ///   - model: the serving model's name.
    init(file: MetricsFile?, model: String) {
        self.file = file
        self.model = model
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        startTime = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// Rewrites the file; a failure is logged (at most once a second) and serving goes on.
    mutating func publish(_ snapshot: ServerSnapshot, refusals: SourceTable.Refusals = .init(), logger: Logger) {
        guard let file else { return }
        do {
            try file.replace(
                with: MetricsFile.render(
                    snapshot, model: model, version: BuildInfo.version, startTime: startTime,
                    idleTimeouts: ConnectionTimeouts.shared.idleClosed, sendTimeouts: ConnectionTimeouts.shared.sendClosed,
                    refusals: refusals)
                    + MetricsFile.renderDatagrams(DatagramShared.shared))
        } catch {
            warning.warn(logger, "cannot write the metrics file", metadata: ["error": "\(error)", "path": "\(file.path)"])
        }
    }

    func remove() { file?.remove() }
}
