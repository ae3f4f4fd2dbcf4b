// SPDX-License-Identifier: Apache-2.0
// The table of configuration keys. Adding a key is adding an entry to `ConfigurationKey.all`
// (plus its field in `Configuration`, its default in `Configuration.init()`, and its
// documentation in etc/echod.conf); the parser, the layering of drop-ins, the duplicate check,
// the origins, `rendered()` and what a reload applies (`onReload`) all work from this table.
import Logging

/// What changing a key does when echod reloads its configuration (SIGHUP).
enum ReloadEffect: Sendable, Equatable {
    /// The new value is applied while running.
    case live
    /// The running value is kept until a restart; the change is logged as waiting for one.
    case restart
    /// Like `restart` when echod binds its own sockets; under socket activation the key is not
    /// used at all, so the change is kept quietly.
    case restartUnlessSocketsPassed
}

/// One key of the configuration file: where it lives, and how its value is parsed, reset and printed.
struct ConfigurationKey: Sendable {
    /// The section name without brackets, e.g. "Server".
    let section: String
    /// The key name, case-sensitive, e.g. "Workers".
    let name: String
    /// Whether assignments accumulate (and an empty assignment empties the list) instead of replacing.
    let isList: Bool
    /// Parses a non-empty value and stores it; a list key appends it.
    let assign: @Sendable (inout Configuration, String) throws(ConfigurationValueError) -> Void
    /// Restores the built-in default (single-valued key) or empties the list (list key).
    let reset: @Sendable (inout Configuration) -> Void
    /// The current value in file syntax; one string per element for a list key.
    let render: @Sendable (Configuration) -> [String]
    /// Whether two configurations hold different values for this key.
    let differs: @Sendable (Configuration, Configuration) -> Bool
    /// Copies this key's value from the first configuration into the second.
    let copy: @Sendable (Configuration, inout Configuration) -> Void

    /// The model this key is for, if only one: setting it while another model is selected is a warning.
    var model: ConcurrencyModel? = nil

    /// A model this key does not apply to (`Processes=` with `Model=fork`): setting it while that
    /// model is selected is a warning.
    var ignoredBy: ConcurrencyModel? = nil

    /// What a reload does with a change of this key.
    var onReload: ReloadEffect = .live

    /// How logs and man pages name the key: `Model=` in `[Server]`, `[Thread] StackSize=` elsewhere.
    var displayName: String { section == "Server" ? "\(name)=" : "[\(section)] \(name)=" }

    /// "Section.Key", the key of `Configuration.origins`.
    var id: String { "\(section).\(name)" }

    /// "Section.Key[index]", the origin of one element of a list key.
    static func elementID(_ id: String, _ index: Int) -> String { "\(id)[\(index)]" }

    /// A key holding one value; a later assignment replaces it.
    static func single<Value: Equatable & Sendable>(
        _ section: String,
        _ name: String,
        _ path: WritableKeyPath<Configuration, Value> & Sendable,
        model: ConcurrencyModel? = nil,
        onReload: ReloadEffect = .live,
        parse: @escaping @Sendable (String) throws(ConfigurationValueError) -> Value,
        format: @escaping @Sendable (Value) -> String
    ) -> ConfigurationKey {
        ConfigurationKey(
            section: section,
            name: name,
            isList: false,
            assign: { (config, text) throws(ConfigurationValueError) in config[keyPath: path] = try parse(text) },
            reset: { config in config[keyPath: path] = Configuration()[keyPath: path] },
            render: { config in [format(config[keyPath: path])] },
            differs: { a, b in a[keyPath: path] != b[keyPath: path] },
            copy: { from, to in to[keyPath: path] = from[keyPath: path] },
            model: model,
            onReload: onReload
        )
    }

    /// A key holding a decimal number in `range`.
    static func integer(
        _ section: String, _ name: String, _ path: WritableKeyPath<Configuration, Int> & Sendable,
        in range: ClosedRange<Int>, model: ConcurrencyModel? = nil, onReload: ReloadEffect = .live
    ) -> ConfigurationKey {
        .single(
            section, name, path, model: model, onReload: onReload,
            parse: { (text) throws(ConfigurationValueError) in try ConfigurationValueParser.integer(text, in: range) },
            format: { String($0) })
    }

    /// A key holding a list; each assignment appends, and an empty assignment empties the list.
    ///
    /// The first assignment anywhere replaces the built-in default list rather than appending
    /// to it (the parser resets the list when it has no origin yet).
    static func list<Element: Equatable & Sendable>(
        _ section: String,
        _ name: String,
        _ path: WritableKeyPath<Configuration, [Element]> & Sendable,
        onReload: ReloadEffect = .live,
        parse: @escaping @Sendable (String) throws(ConfigurationValueError) -> Element,
        format: @escaping @Sendable (Element) -> String
    ) -> ConfigurationKey {
        ConfigurationKey(
            section: section,
            name: name,
            isList: true,
            assign: { (config, text) throws(ConfigurationValueError) in config[keyPath: path].append(try parse(text)) },
            reset: { config in config[keyPath: path] = [] },
            render: { config in config[keyPath: path].map(format) },
            differs: { a, b in a[keyPath: path] != b[keyPath: path] },
            copy: { from, to in to[keyPath: path] = from[keyPath: path] },
            onReload: onReload
        )
    }

    /// Every key, in the order `rendered()` prints them.
    static let all: [ConfigurationKey] = [
        .single(
            "Server", "Model", \.model, onReload: .restart,
            parse: { (text) throws(ConfigurationValueError) in
                try ConfigurationValueParser.choice(text, of: ConcurrencyModel.self)
            },
            format: { $0.rawValue }
        ),
        .list(
            "Server", "Listen", \.listen, onReload: .restartUnlessSocketsPassed,
            parse: { (text) throws(ConfigurationValueError) in
                do throws(SocketAddress.ParseError) {
                    return try SocketAddress(parsing: text)
                } catch {
                    throw ConfigurationValueError(error.reason)
                }
            },
            format: { $0.description }
        ),
        .list(
            "Server", "ListenDatagram", \.listenDatagram, onReload: .restartUnlessSocketsPassed,
            parse: { (text) throws(ConfigurationValueError) in
                do throws(SocketAddress.ParseError) {
                    return try SocketAddress(parsing: text)
                } catch {
                    throw ConfigurationValueError(error.reason)
                }
            },
            format: { $0.description }
        ),
        .integer("Server", "Workers", \.workers, in: 0...1024, onReload: .restart),
        {
            // Restart only: the processes are forked at start, before any thread exists.
            var key = ConfigurationKey.single(
                "Server", "Processes", \.processes, onReload: .restart,
                parse: { (text) throws(ConfigurationValueError) -> ProcessCount in
                    if text == "auto" { return .auto }
                    return .count(
                        try ConfigurationValueParser.integer(text, in: 1...ProcessCount.maximum, or: " or 'auto'"))
                },
                format: { $0.description })
            key.ignoredBy = .fork
            return key
        }(),
        .single(
            "Server", "MaxConnections", \.maxConnections,
            parse: { (text) throws(ConfigurationValueError) in
                if text == "auto" { return .auto }
                return .limit(try ConfigurationValueParser.integer(text, in: 1...10_000_000, or: " or 'auto'"))
            },
            format: { limit in
                switch limit {
                case .auto: return "auto"
                case .limit(let n): return String(n)
                }
            }
        ),
        .single(
            "Server", "Backlog", \.backlog, onReload: .restartUnlessSocketsPassed,
            parse: { (text) throws(ConfigurationValueError) in
                Int32(try ConfigurationValueParser.integer(text, in: 1...1_000_000))
            },
            format: { String($0) }
        ),
        .single(
            "Server", "StopTimeoutSec", \.stopTimeout,
            parse: { (text) throws(ConfigurationValueError) in
                guard let micros = ConfigurationValueParser.timeSpanMicroseconds(text), micros > 0,
                    micros <= 3_600_000_000
                else {
                    throw ConfigurationValueError(
                        "expected a time span greater than 0 and at most 1h, e.g. '10', '2.5s', '500ms', '1min'")
                }
                return .microseconds(micros)
            },
            format: { ConfigurationValueParser.formatTimeSpan($0) }
        ),
        .single(
            "Server", "IdleTimeoutSec", \.idleTimeout, parse: ConnectionTimeouts.parse, format: ConnectionTimeouts.format),
        .single(
            "Server", "SendTimeoutSec", \.sendTimeout, parse: ConnectionTimeouts.parse, format: ConnectionTimeouts.format),
        .single(
            "Server", "MaxConnectionsPerSource", \.maxConnectionsPerSource,
            parse: SourceLimitSettings.parseCount, format: SourceLimitSettings.formatCount),
        .single(
            "Server", "MaxConnectionRatePerSource", \.maxConnectionRatePerSource,
            parse: SourceLimitSettings.parseRate, format: SourceLimitSettings.formatRate),
        .single(
            "Server", "MaxConnectionBurstPerSource", \.maxConnectionBurstPerSource,
            parse: SourceLimitSettings.parseBurst, format: SourceLimitSettings.formatBurst),
        .single(
            "Server", "SourcePrefixIPv6", \.sourcePrefixIPv6,
            parse: SourceLimitSettings.parsePrefix, format: { String($0) }),
        .single(
            "Server", "LogLevel", \.logLevel,
            parse: { (text) throws(ConfigurationValueError) in
                try ConfigurationValueParser.choice(text, of: Logger.Level.self)
            },
            format: { $0.rawValue }
        ),
        .single(
            "Limits", "NoFile", \.noFile,
            parse: { (text) throws(ConfigurationValueError) in
                if text == "max" { return .max }
                guard let n = ConfigurationValueParser.unsigned(text, in: 1...UInt64(UInt32.max)) else {
                    throw ConfigurationValueError("expected a number from 1 to \(UInt32.max) or 'max'")
                }
                return .value(n)
            },
            format: { $0.description }
        ),
        .single(
            "Limits", "NProc", \.nProc,
            parse: { (text) throws(ConfigurationValueError) in
                try ConfigurationValueParser.resourceLimit(text, bytes: false)
            },
            format: { $0?.description ?? "" }
        ),
        .single(
            "Limits", "Core", \.core,
            parse: { (text) throws(ConfigurationValueError) in
                try ConfigurationValueParser.resourceLimit(text, bytes: true, minimum: 0)
            },
            format: { $0?.description ?? "" }
        ),
        .single(
            "Limits", "StackSize", \.stackSize,
            parse: { (text) throws(ConfigurationValueError) in
                try ConfigurationValueParser.resourceLimit(text, bytes: true, minimum: 128 * 1024)
            },
            format: { $0?.description ?? "" }
        ),
        .single(
            "Thread", "StackSize", \.threadStackSize, model: .thread, onReload: .restart,
            parse: { (text) throws(ConfigurationValueError) in
                guard let n = ConfigurationValueParser.size(text), n >= 16 * 1024, n <= 64 * 1024 * 1024 else {
                    throw ConfigurationValueError("expected a size from 16K to 64M, e.g. '64K'")
                }
                return Int(n)
            },
            format: { ConfigurationValueParser.formatSize(UInt64($0)) }
        ),
        .integer("Thread", "MaxThreads", \.maxThreads, in: 1...1_000_000, model: .thread),
        .integer("Fork", "MaxChildren", \.maxChildren, in: 1...1_000_000, model: .fork),
        .single(
            "UDP", "MaxBytesPerSecond", \.udpMaxBytesPerSecond,
            parse: { (text) throws(ConfigurationValueError) in
                if text == "infinity" { return nil }
                guard let n = ConfigurationValueParser.size(text), n >= 1024, n <= 1 << 40 else {
                    throw ConfigurationValueError("expected a size from 1K to 1T per second, e.g. '16M', or 'infinity'")
                }
                return n
            },
            format: { $0.map { ConfigurationValueParser.formatSize($0) } ?? "infinity" }
        ),
        .single(
            "UDP", "RatePerSource", \.udpRatePerSource,
            parse: { (text) throws(ConfigurationValueError) in
                do throws(ConfigurationValueError) {
                    return try SourceLimitSettings.parseRate(text)
                } catch {
                    throw ConfigurationValueError(
                        "expected datagrams per second from 0.001 to 1000000, e.g. '100', '0.5/s', '30/min', or 'infinity' (or 0) for none")
                }
            },
            format: SourceLimitSettings.formatRate
        ),
        .single(
            "UDP", "BurstPerSource", \.udpBurstPerSource, parse: SourceLimitSettings.parseBurst,
            format: SourceLimitSettings.formatBurst
        ),
        .single(
            // Restart only: the trigger's signal is blocked and read from the signalfd only if
            // the key is on at start (`WatchdogTestTrigger.arm`, before any thread exists).
            "Debug", "WatchdogTestTrigger", \.watchdogTestTrigger, onReload: .restart,
            parse: { (text) throws(ConfigurationValueError) in
                guard let value = ConfigurationValueParser.boolean(text) else {
                    throw ConfigurationValueError("expected a boolean (yes/no, true/false, on/off, 1/0)")
                }
                return value
            },
            format: { $0 ? "yes" : "no" }
        ),
    ]

    /// Section names in first-appearance order of `all`.
    static let sections: [String] = all.reduce(into: []) { sections, key in
        if !sections.contains(key.section) { sections.append(key.section) }
    }

    private static let byID: [String: ConfigurationKey] = Dictionary(
        uniqueKeysWithValues: all.map { ($0.id, $0) })

    /// The key `name` of `[section]`, if there is one.
    static func find(section: String, name: String) -> ConfigurationKey? {
        byID["\(section).\(name)"]
    }
}
