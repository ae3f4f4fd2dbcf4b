// SPDX-License-Identifier: Apache-2.0
// The systemd INI dialect (systemd.syntax(7)), applied to a `Configuration` one file at a time.
//
// Lexing follows systemd's config_parse() in src/shared/conf-parser.c: comment lines are
// dropped before continuation handling, so a `#` line inside a continued line is skipped;
// a line whose last character is an unescaped backslash continues on the next one, with the
// backslash replaced by a space; a UTF-8 byte order mark at the start is ignored. Errors do
// not stop parsing, so one run reports every mistake in a file.

/// Diagnostics collected while reading files, put in file and line order at the end.
struct ConfigurationDiagnosticLog {
    private var entries: [(file: String?, diagnostic: ConfigurationDiagnostic)] = []

    /// Records an error at `location`.
    mutating func error(_ message: String, at location: SourceLocation?) {
        entries.append(
            (location?.file, ConfigurationDiagnostic(severity: .error, location: location, message: message)))
    }

    /// Records a warning at `location`.
    mutating func warning(_ message: String, at location: SourceLocation?) {
        entries.append(
            (location?.file, ConfigurationDiagnostic(severity: .warning, location: location, message: message)))
    }

    /// Records an error about a whole file; `message` should start with the path.
    mutating func fileError(_ message: String, file: String) {
        entries.append((file, ConfigurationDiagnostic(severity: .error, location: nil, message: message)))
    }

    /// Records a warning about a whole file; `message` should start with the path.
    mutating func fileWarning(_ message: String, file: String) {
        entries.append((file, ConfigurationDiagnostic(severity: .warning, location: nil, message: message)))
    }

    /// The diagnostics ordered by the position of their file in `fileOrder`, then by line
    /// (file-level ones first), then by the order they were recorded.
    ///
    /// At most `limit` diagnostics are returned, the errors among the first `limit` in that order
    /// kept; past it, a last error says how many more were found (as compilers stop after a number
    /// of errors): a file of a hundred thousand mistakes is reported in a screenful, not one log
    /// line per mistake on every reload.
    func sorted(fileOrder: [String], limit: Int = ConfigurationDiagnosticLog.limit) -> [ConfigurationDiagnostic] {
        var ranks: [String: Int] = [:]
        for (index, file) in fileOrder.enumerated() where ranks[file] == nil { ranks[file] = index }
        let keyed = entries.enumerated().map { offset, entry in
            (rank: entry.file.map { ranks[$0] ?? Int.max } ?? -1, line: entry.diagnostic.location?.line ?? 0, offset: offset)
        }
        let order = keyed.sorted { ($0.rank, $0.line, $0.offset) < ($1.rank, $1.line, $1.offset) }
        var result = order.prefix(limit).map { entries[$0.offset].diagnostic }
        if order.count > limit {
            let hidden = order.dropFirst(limit)
            let errors = hidden.count { entries[$0.offset].diagnostic.severity == .error }
            result.append(
                ConfigurationDiagnostic(
                    severity: errors > 0 ? .error : .warning, location: nil,
                    message: "\(hidden.count) more diagnostics not shown (errors: \(errors), "
                        + "warnings: \(hidden.count - errors))"))
        }
        return result
    }

    /// How many diagnostics `sorted(fileOrder:)` returns before its summary line.
    static let limit = 100
}

/// Parses configuration text and checks the result.
enum ConfigurationParser {
    /// A line after comment removal and continuation joining.
    struct LogicalLine: Equatable {
        /// The 1-based number of its first physical line.
        var line: Int
        /// The text, trimmed of blanks at both ends; `nil` if it is not valid UTF-8.
        var text: String?
    }

    private static func isBlank(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\r")
            || byte == UInt8(ascii: "\n")
    }

    /// Splits file contents into logical lines: comments and blank lines dropped, continued
    /// lines joined.
    static func logicalLines(_ bytes: [UInt8]) -> [LogicalLine] {
        var body = bytes[...]
        if body.starts(with: [0xEF, 0xBB, 0xBF]) { body = body.dropFirst(3) }

        var result: [LogicalLine] = []
        // The logical line being continued, grown in place: joining by `previous + raw` would
        // copy it once per physical line, quadratic in a file of backslash-continued lines.
        var pending: [UInt8] = []
        var continuing = false
        var pendingLine = 0

        func emit(_ raw: [UInt8], line: Int) {
            guard let first = raw.firstIndex(where: { !isBlank($0) }), let last = raw.lastIndex(where: { !isBlank($0) })
            else { return }
            result.append(LogicalLine(line: line, text: String(validating: raw[first...last], as: UTF8.self)))
        }

        for (offset, physical) in body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            .enumerated()
        {
            let lineNumber = offset + 1
            var raw = physical
            if raw.last == UInt8(ascii: "\r") { raw = raw.dropLast() }
            if let first = raw.first(where: { !isBlank($0) }), first == UInt8(ascii: "#") || first == UInt8(ascii: ";")
            {
                continue
            }
            if !continuing {
                pending.removeAll(keepingCapacity: true)
                pendingLine = lineNumber
            }
            pending.append(contentsOf: raw)
            // Only an unescaped final backslash continues the line: `\\` at the end does not.
            // Scanning this physical line alone is enough: what came before it ends with the
            // space that replaced the previous continuation backslash, which escapes nothing.
            var escaped = false
            for byte in raw {
                escaped = escaped ? false : byte == UInt8(ascii: "\\")
            }
            if escaped {
                pending[pending.count - 1] = UInt8(ascii: " ")
                continuing = true
                continue
            }
            continuing = false
            emit(pending, line: pendingLine)
        }
        if continuing { emit(pending, line: pendingLine) }
        return result
    }

    private enum SectionState {
        case none
        case known(String)
        /// After an unknown or malformed section header: its keys are skipped silently, since
        /// the header was already reported.
        case ignored
    }

    /// Applies one file's contents on top of `config` and appends `file` to `config.sources`.
    ///
    /// Checks that need every file (duplicate addresses, keys set for another model) are left to
    /// `validate(_:log:)`.
    ///
    /// - Parameters:
    ///   - bytes: the file's contents.
    ///   - file: the path used in diagnostics and origins.
    ///   - config: the configuration to update; a key with an invalid value keeps its old value.
    ///   - log: where problems go.
    static func apply(
        _ bytes: [UInt8], file: String, to config: inout Configuration, log: inout ConfigurationDiagnosticLog
    ) {
        config.sources.append(file)
        var section = SectionState.none
        // Single-valued keys set in this file, with their line: a second assignment in one file
        // is a mistake, while a later file overriding an earlier one is what drop-ins are for.
        var firstSet: [String: Int] = [:]
        // Element counts of the list keys touched in this file, so that an assignment does not
        // render the whole list to learn its length (quadratic in a file of `Listen=` lines).
        var listCounts: [String: Int] = [:]

        for logical in logicalLines(bytes) {
            let location = SourceLocation(file: file, line: logical.line)
            guard let text = logical.text else {
                log.error("line is not valid UTF-8", at: location)
                continue
            }

            if text.hasPrefix("[") {
                section = .ignored
                guard let close = text.firstIndex(of: "]") else {
                    log.error("missing ']' in section header", at: location)
                    continue
                }
                guard text.index(after: close) == text.endIndex else {
                    log.error("unexpected text after ']' in section header", at: location)
                    continue
                }
                let name = String(text[text.index(after: text.startIndex)..<close])
                if ConfigurationKey.sections.contains(name) {
                    section = .known(name)
                } else {
                    var message = "unknown section [\(name)]"
                    if let hint = ConfigurationValueParser.closest(to: name, among: ConfigurationKey.sections) {
                        message += " (did you mean [\(hint)]?)"
                    }
                    log.error(message, at: location)
                }
                continue
            }

            guard let equals = text.firstIndex(of: "=") else {
                log.error("expected [Section] or Key=Value, got '\(text)'", at: location)
                continue
            }
            let name = String(trimmingBlanks(text[..<equals]))
            let value = String(trimmingBlanks(text[text.index(after: equals)...]))
            guard !name.isEmpty else {
                log.error("expected [Section] or Key=Value, got '\(text)'", at: location)
                continue
            }

            switch section {
            case .none:
                log.error("assignment outside of any section", at: location)
            case .ignored:
                break
            case .known(let sectionName):
                guard let key = ConfigurationKey.find(section: sectionName, name: name) else {
                    log.error(unknownKeyMessage(name, in: sectionName), at: location)
                    continue
                }
                assign(
                    value, to: key, at: location, in: &config, firstSet: &firstSet, listCounts: &listCounts, log: &log)
            }
        }
    }

    private static func assign(
        _ value: String,
        to key: ConfigurationKey,
        at location: SourceLocation,
        in config: inout Configuration,
        firstSet: inout [String: Int],
        listCounts: inout [String: Int],
        log: inout ConfigurationDiagnosticLog
    ) {
        let id = key.id
        if key.isList {
            if value.isEmpty || config.origins[id] == nil {
                // An empty value empties the list, as in systemd; and the first assignment
                // anywhere replaces the built-in default instead of adding to it.
                let count = listCounts[id] ?? key.render(config).count
                key.reset(&config)
                for index in 0..<count { config.origins[ConfigurationKey.elementID(id, index)] = nil }
                listCounts[id] = 0
            }
            config.origins[id] = location
            guard !value.isEmpty else { return }
            do {
                try key.assign(&config, value)
                let count = (listCounts[id] ?? key.render(config).count - 1) + 1
                listCounts[id] = count
                config.origins[ConfigurationKey.elementID(id, count - 1)] = location
            } catch {
                log.error("invalid value '\(value)' for \(key.name)=: \(error.reason)", at: location)
            }
            return
        }

        if let first = firstSet[id] {
            log.error("duplicate key '\(key.name)' in [\(key.section)] (first set at line \(first))", at: location)
            return
        }
        firstSet[id] = location.line
        if value.isEmpty {
            // As in systemd, an empty assignment restores the default.
            key.reset(&config)
            config.origins[id] = nil
            return
        }
        do {
            try key.assign(&config, value)
            config.origins[id] = location
        } catch {
            log.error("invalid value '\(value)' for \(key.name)=: \(error.reason)", at: location)
        }
    }

    /// The key names of each section, for "did you mean" hints: built once, since a file of
    /// unknown keys asks for them on every line.
    private static let keyNames: [String: [String]] = Dictionary(
        grouping: ConfigurationKey.all.map { ($0.section, $0.name) }, by: \.0
    ).mapValues { $0.map(\.1) }

    private static func unknownKeyMessage(_ name: String, in section: String) -> String {
        let message = "unknown key '\(name)' in [\(section)]"
        if let hint = ConfigurationValueParser.closest(to: name, among: keyNames[section] ?? []) {
            return message + " (did you mean '\(hint)'?)"
        }
        if let elsewhere = ConfigurationKey.all.first(where: { $0.name == name }) {
            return message + " (\(name)= belongs in [\(elsewhere.section)])"
        }
        return message
    }

    private static func trimmingBlanks(_ text: Substring) -> Substring {
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = text.firstIndex(where: { !isBlank($0) }), let last = text.lastIndex(where: { !isBlank($0) })
        else { return "" }
        return text[first...last]
    }

    /// Checks what can only be judged once every file is applied: keys set for a model that is not selected (warnings), and addresses listed twice in the
    /// final `Listen=` list.
    static func validate(_ config: Configuration, log: inout ConfigurationDiagnosticLog) {
        for key in ConfigurationKey.all {
            guard let model = key.model, model != config.model, let origin = config.origins[key.id] else { continue }
            log.warning(
                "\(key.name)= in [\(key.section)] applies only to Model=\(model.rawValue); "
                    + "ignored with Model=\(config.model.rawValue)",
                at: origin)
        }
        for key in ConfigurationKey.all {
            guard let model = key.ignoredBy, model == config.model, let origin = config.origins[key.id] else { continue }
            log.warning(
                "\(key.name)= in [\(key.section)] does not apply to Model=\(model.rawValue); ignored", at: origin)
        }

        var firstIndex: [SocketAddress: Int] = [:]
        for (index, address) in config.listen.enumerated() {
            guard let first = firstIndex[address] else {
                firstIndex[address] = index
                continue
            }
            let location = config.origins[ConfigurationKey.elementID("Server.Listen", index)]
            var message = "duplicate address \(address) in Listen="
            if let firstLocation = config.origins[ConfigurationKey.elementID("Server.Listen", first)] {
                message +=
                    firstLocation.file == location?.file
                    ? " (first given at line \(firstLocation.line))" : " (first given at \(firstLocation))"
            }
            log.error(message, at: location)
        }
    }
}
