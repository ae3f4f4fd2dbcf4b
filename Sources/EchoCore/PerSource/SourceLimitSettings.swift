// SPDX-License-Identifier: Apache-2.0
// The per-source keys of [Server] (MaxConnectionsPerSource=, MaxConnectionRatePerSource=,
// MaxConnectionBurstPerSource=, SourcePrefixIPv6=): their syntax, and the table limits they make.

/// Parsing and printing of the per-source keys, and the limits they give.
enum SourceLimitSettings {
    /// `MaxConnectionsPerSource=`: a number from 1 to 10,000,000, or `infinity` (or 0) for none.
    static func parseCount(_ text: String) throws(ConfigurationValueError) -> Int? {
        if text == "infinity" || text == "0" { return nil }
        return try ConfigurationValueParser.integer(text, in: 1...10_000_000, or: ", or 'infinity' (or 0) for none")
    }

    static func formatCount(_ value: Int?) -> String { value.map(String.init) ?? "infinity" }

    /// `MaxConnectionRatePerSource=`: connections per second as a decimal number with up to three
    /// places (`10`, `0.5`), optionally followed by `/s`, or per minute with `/min` (`30/min`);
    /// from 0.001/s to 1000000/s, or `infinity` (or 0) for none.
    ///
    /// - Returns: the rate in thousandths per second, or nil for none.
    static func parseRate(_ text: String) throws(ConfigurationValueError) -> Int? {
        if text == "infinity" || text == "0" { return nil }
        let error = ConfigurationValueError(
            "expected connections per second from 0.001 to 1000000, e.g. '10', '0.5/s', '30/min', or 'infinity' (or 0) for none")
        var number = Substring(text)
        var perMinute = false
        if number.hasSuffix("/min") {
            number = number.dropLast(4)
            perMinute = true
        } else if number.hasSuffix("/s") {
            number = number.dropLast(2)
        }
        let parts = number.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, let whole = parts.first, !whole.isEmpty, whole.count <= 10,
            whole.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
        else { throw error }
        var millis = Int(whole)! * 1000
        if parts.count == 2 {
            let fraction = parts[1]
            guard !fraction.isEmpty, fraction.count <= 3,
                fraction.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
            else { throw error }
            millis += Int(fraction)! * [100, 10, 1][fraction.count - 1]
        }
        if perMinute {
            // Per minute, kept in thousandths per second: 30/min is 500.
            millis /= 60
        }
        guard millis >= 1, millis <= 1_000_000_000 else { throw error }
        return millis
    }

    /// A rate in thousandths per second as the file writes it: `10`, `0.5`.
    static func formatRate(_ millis: Int?) -> String {
        guard let millis else { return "infinity" }
        let fraction = millis % 1000
        if fraction == 0 { return "\(millis / 1000)" }
        var digits = String(fraction)
        digits = String(repeating: "0", count: 3 - digits.count) + digits
        while digits.hasSuffix("0") { digits.removeLast() }
        return "\(millis / 1000).\(digits)"
    }

    /// `MaxConnectionBurstPerSource=`: a number from 1 to 1,000,000, or `auto` (one second's
    /// worth of the rate, at least 1).
    static func parseBurst(_ text: String) throws(ConfigurationValueError) -> Int? {
        if text == "auto" { return nil }
        return try ConfigurationValueParser.integer(text, in: 1...1_000_000, or: ", or 'auto'")
    }

    static func formatBurst(_ value: Int?) -> String { value.map(String.init) ?? "auto" }

    /// `SourcePrefixIPv6=`: 1 to 128, optionally written with a leading `/`.
    static func parsePrefix(_ text: String) throws(ConfigurationValueError) -> Int {
        let digits = text.hasPrefix("/") ? String(text.dropFirst()) : text
        return try ConfigurationValueParser.integer(digits, in: 1...128)
    }
}

extension SourceTable.Limits {
    /// The per-source limits of a configuration.
    public init(_ configuration: Configuration) {
        var rate: TokenBucket? = nil
        if let millis = configuration.maxConnectionRatePerSource {
            // `auto`: a second's worth of the rate, at least one connection.
            let burst = configuration.maxConnectionBurstPerSource ?? max(1, millis / 1000)
            rate = TokenBucket(millisPerSecond: millis, burst: burst)
        }
        self.init(
            maxConnections: configuration.maxConnectionsPerSource, rate: rate,
            prefixIPv6: configuration.sourcePrefixIPv6)
    }
}
