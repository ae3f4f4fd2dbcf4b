// SPDX-License-Identifier: Apache-2.0
// echod's swift-log backend. Under journald (systemd connected stderr to the journal, as
// $JOURNAL_STREAM says) each line starts with a syslog priority prefix `<N>`, which journald
// turns into the entry's PRIORITY, and carries no timestamp or program name (the journal adds
// both). Otherwise lines are plain text on stderr with a timestamp.
//
// Each record is one write(2) of one line, from whatever thread logs, with no lock and no
// background thread (the fork model must be able to fork at any time).
import Glibc
import Logging
import Synchronization

/// The log level in force, shared by every logger so a reload can change it.
public final class LogLevelSetting: Sendable {
    private let raw: Atomic<UInt8>

    public init(_ level: Logger.Level) { raw = Atomic(Self.code(level)) }

    public var level: Logger.Level {
        get { Self.levels[Int(raw.load(ordering: .relaxed))] }
        set { raw.store(Self.code(newValue), ordering: .relaxed) }
    }

    private static let levels = Logger.Level.allCases
    private static func code(_ level: Logger.Level) -> UInt8 { UInt8(levels.firstIndex(of: level)!) }
}

/// Writes log records to a file descriptor (stderr), journald-style or plain.
public struct EchodLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider? = nil
    private let setting: LogLevelSetting
    private let fd: Int32
    private let journal: Bool
    private let label: String

    /// - Parameters:
    ///   - label: program name for plain lines.
    ///   - setting: shared level.
    ///   - fd: where to write (2 for stderr).
    ///   - journal: write `<N>` priority prefixes instead of timestamps; defaults to whether
    ///     `fd` is the stream `$JOURNAL_STREAM` names.
    public init(label: String, setting: LogLevelSetting, fd: Int32 = 2, journal: Bool? = nil) {
        self.label = label
        self.setting = setting
        self.fd = fd
        self.journal = journal ?? Self.isJournalStream(fd)
    }

    public var logLevel: Logger.Level {
        get { setting.level }
        set { setting.level = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { $1 } }
        if let extra = event.metadata { all.merge(extra) { $1 } }
        Self.write(
            Self.format(level: event.level, message: event.message.description, metadata: all, journal: journal, label: label),
            to: fd)
    }

    /// Writes `line` with as few write(2) calls as the kernel allows (one, for a line shorter
    /// than PIPE_BUF, so lines from several threads never interleave). Failures are dropped:
    /// logging must not take the daemon down.
    private static func write(_ line: String, to fd: Int32) {
        var bytes = Array(line.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            offset += n
        }
    }

    /// One formatted line, newline-terminated; metadata sorted by key.
    public static func format(
        level: Logger.Level, message: String, metadata: Logger.Metadata, journal: Bool, label: String
    ) -> String {
        var line = ""
        if journal {
            line += "<\(priority(level))>"
        } else {
            line += "\(timestamp()) \(label)[\(getpid())]: \(level): "
        }
        // A message is one line: a newline would start a fake record.
        line += message.replacing("\n", with: "\\n")
        for key in metadata.keys.sorted() {
            let value = "\(metadata[key]!)".replacing("\n", with: "\\n")
            line += " \(key)=\(value)"
        }
        line += "\n"
        return line
    }

    /// Writes `text` as it is (plus a newline) to stderr, with a `<N>` priority prefix under
    /// journald: for diagnostics such as `echod.conf:12: unknown key ...`, which read best
    /// like a compiler's, without the log's timestamp and level.
    public static func writeDiagnostic(_ text: String, level: Logger.Level, fd: Int32 = 2) {
        write((isJournalStream(fd) ? "<\(priority(level))>" : "") + text.replacing("\n", with: "\\n") + "\n", to: fd)
    }

    /// syslog(3) priority for a level.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// Whether `fd` is the journal stream systemd set up (`$JOURNAL_STREAM` is "DEVICE:INODE"
    /// of it; checking the inode avoids trusting a variable inherited by a child whose stderr
    /// was redirected elsewhere).
    public static func isJournalStream(_ fd: Int32) -> Bool {
        guard let raw = getenv("JOURNAL_STREAM") else { return false }
        let parts = String(cString: raw).split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }

    private static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var tm = tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
            + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2))."
            + "\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
    }
}
