// SPDX-License-Identifier: Apache-2.0
// Where the configuration came from, so that a reload reads the same files again, and how its
// diagnostics reach stderr (the journal) at start and on reload alike.

/// Where the configuration came from, so a reload can read it again.
public struct ConfigurationSource: Sendable {
    public var path: String
    public var explicitlyRequested: Bool

    public init(path: String, explicitlyRequested: Bool) {
        self.path = path
        self.explicitlyRequested = explicitlyRequested
    }

    /// Reads the configuration, writing every warning and error to stderr as its own
    /// `file:line: message` line (with a priority prefix under journald), as at start and on
    /// reload alike.
    ///
    /// - Throws: `ConfigurationError` when the configuration is invalid (already reported).
    public func loadReportingDiagnostics() throws(ConfigurationError) -> Configuration {
        do {
            let (loaded, warnings) = try ConfigurationLoader.load(path: path, explicitlyRequested: explicitlyRequested)
            for w in warnings { EchodLogHandler.writeDiagnostic("\(w)", level: .warning) }
            return loaded
        } catch {
            for d in error.diagnostics {
                EchodLogHandler.writeDiagnostic("\(d)", level: d.severity == .error ? .error : .warning)
            }
            throw error
        }
    }
}
