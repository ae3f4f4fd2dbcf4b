// SPDX-License-Identifier: Apache-2.0
/// One problem found in the configuration files.
public struct ConfigurationDiagnostic: Sendable, Equatable, CustomStringConvertible {
    /// Whether the problem stops echod from starting.
    public enum Severity: Sendable {
        /// The configuration is rejected.
        case error
        /// The configuration is used, but something in it is probably not what was meant.
        case warning
    }

    /// Error or warning.
    public var severity: Severity
    /// The line at fault; `nil` for file-level problems such as "cannot open", whose `message`
    /// then starts with the path.
    public var location: SourceLocation?
    /// What is wrong, without the location, e.g. "unknown key 'Modle' in [Server]".
    public var message: String

    /// - Parameters:
    ///   - severity: error or warning.
    ///   - location: the line at fault, or `nil` for a file-level problem.
    ///   - message: what is wrong.
    public init(severity: Severity, location: SourceLocation?, message: String) {
        self.severity = severity
        self.location = location
        self.message = message
    }

    /// `path:line: message`, with `warning: ` after the location for warnings.
    public var description: String {
        let prefix = location.map { "\($0): " } ?? ""
        let tag = severity == .warning ? "warning: " : ""
        return prefix + tag + message
    }
}

/// The configuration was rejected.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    /// Every error found (parsing goes on after an error), in file and line order, with the
    /// warnings found along the way in their places.
    public var diagnostics: [ConfigurationDiagnostic]

    /// - Parameter diagnostics: the problems, at least one of them an error.
    public init(diagnostics: [ConfigurationDiagnostic]) {
        self.diagnostics = diagnostics
    }

    /// One diagnostic per line, without a trailing newline.
    public var description: String {
        diagnostics.map(\.description).joined(separator: "\n")
    }
}
