// SPDX-License-Identifier: Apache-2.0
// The small value types that configuration keys hold. Each one prints back in the
// configuration file's own syntax, so `Configuration.rendered()` can show it.

/// How echod serves connections: `Model=` in `[Server]`.
public enum ConcurrencyModel: String, CaseIterable, Sendable {
    /// One epoll loop per worker thread; many connections per thread.
    case event
    /// One thread per connection.
    case thread
    /// One child process per connection.
    case fork

}

/// The most connections echod keeps open at once: `MaxConnections=` in `[Server]`.
public enum ConnectionLimit: Sendable, Equatable {
    /// The soft `RLIMIT_NOFILE` minus a reserve for listeners, logging and the like,
    /// decided by the daemon at start.
    case auto
    /// An explicit limit, 1 to 10,000,000.
    case limit(Int)
}

/// How many worker processes serve connections: `Processes=` in `[Server]`.
public enum ProcessCount: Sendable, Equatable {
    /// One per CPU echod may run on (`sched_getaffinity(2)`, so `taskset` and `CPUAffinity=`
    /// are honoured), at most `ProcessCount.maximum`.
    case auto
    /// An explicit count, 1 to `ProcessCount.maximum`.
    case count(Int)

    /// The most worker processes echod runs.
    public static let maximum = 1024

    /// `auto` or the number, as written in the configuration file.
    public var description: String {
        switch self {
        case .auto: return "auto"
        case .count(let n): return String(n)
        }
    }
}

/// A resource limit to apply at start: `NoFile=` in `[Limits]`.
public enum ResourceLimitValue: Sendable, Equatable, CustomStringConvertible {
    /// Raise the soft limit to the hard limit.
    case max
    /// Set the soft limit to this value (checked against the hard limit at start, not here).
    case value(UInt64)

    /// `max` or the number, as written in the configuration file.
    public var description: String {
        switch self {
        case .max: return "max"
        case .value(let n): return String(n)
        }
    }
}

/// A line in a configuration file.
public struct SourceLocation: Sendable, Equatable, CustomStringConvertible {
    /// The file's path, as it was opened (or the name given to `ConfigurationLoader.apply`).
    public var file: String
    /// The 1-based line number; for a line continued with `\`, its first line.
    public var line: Int

    /// - Parameters:
    ///   - file: the file's path.
    ///   - line: the 1-based line number.
    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }

    /// `path:line`, the form compilers and systemd use.
    public var description: String { "\(file):\(line)" }
}
