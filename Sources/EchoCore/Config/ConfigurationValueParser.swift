// SPDX-License-Identifier: Apache-2.0
// Value syntaxes shared by configuration keys, following systemd where it has one:
// booleans as parse_boolean() and time spans as parse_sec() (systemd.time(7)).
// Everything is strict: a value either parses exactly or is rejected with what was expected.

/// Why a value was rejected: the text after "invalid value 'x' for Key=: ".
struct ConfigurationValueError: Error {
    let reason: String

    init(_ reason: String) {
        self.reason = reason
    }
}

/// Parsers for the value syntaxes of the configuration file.
enum ConfigurationValueParser {
    /// Parses a decimal number: digits only, no sign, no spaces, no suffix.
    ///
    /// - Returns: the number, or `nil` if `text` is not all digits, overflows, or is outside `range`.
    static func unsigned(_ text: String, in range: ClosedRange<UInt64>) -> UInt64? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
            let number = UInt64(text), range.contains(number)
        else { return nil }
        return number
    }

    /// Parses a decimal number in an `Int` range.
    ///
    /// - Throws: `ConfigurationValueError` "expected a number from A to B", plus `alternatives`.
    static func integer(_ text: String, in range: ClosedRange<Int>, or alternatives: String = "")
        throws(ConfigurationValueError) -> Int
    {
        guard let number = unsigned(text, in: UInt64(range.lowerBound)...UInt64(range.upperBound)) else {
            throw ConfigurationValueError(
                "expected a number from \(range.lowerBound) to \(range.upperBound)\(alternatives)")
        }
        return Int(number)
    }

    /// Parses one of an enum's raw values, case-sensitively.
    ///
    /// - Throws: `ConfigurationValueError` listing the accepted values.
    static func choice<T: RawRepresentable & CaseIterable>(_ text: String, of type: T.Type)
        throws(ConfigurationValueError)
        -> T where T.RawValue == String
    {
        if let value = T(rawValue: text) { return value }
        throw ConfigurationValueError("expected one of: " + T.allCases.map(\.rawValue).joined(separator: ", "))
    }

    /// Parses a size in bytes with an optional binary suffix as systemd does: `65536`, `64K`,
    /// `1M`, `2G` (K = 1024).
    ///
    /// - Returns: the size, or nil when malformed or overflowing.
    static func size(_ text: String) -> UInt64? {
        guard let last = text.last else { return nil }
        let multipliers: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = text
        var multiplier: UInt64 = 1
        if let m = multipliers[last] {
            multiplier = m
            digits.removeLast()
        }
        guard let n = unsigned(digits, in: 0...UInt64.max) else { return nil }
        let (product, overflow) = n.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : product
    }

    /// Prints a size with the largest exact binary suffix (`64K`, `8M`, `100`).
    static func formatSize(_ n: UInt64) -> String {
        for (suffix, m) in [("T", UInt64(1) << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)]
        where n >= m && n % m == 0 {
            return "\(n / m)\(suffix)"
        }
        return String(n)
    }

    /// Parses a resource limit: `max` (raise the soft limit to the hard one) or a number,
    /// with size suffixes when `bytes`.
    static func resourceLimit(_ text: String, bytes: Bool, minimum: UInt64 = 1)
        throws(ConfigurationValueError) -> ResourceLimitValue?
    {
        if text == "max" { return .max }
        let n = bytes ? size(text) : unsigned(text, in: 0...UInt64.max)
        guard let n, n >= minimum else {
            let what = bytes ? "a size of at least \(formatSize(minimum)) (e.g. '8M')" : "a number of at least \(minimum)"
            throw ConfigurationValueError("expected \(what) or 'max'")
        }
        return .value(n)
    }

    /// Parses a systemd boolean: `1`, `yes`, `y`, `true`, `t`, `on` or `0`, `no`, `n`, `false`, `f`,
    /// `off`, in any case.
    ///
    /// - Returns: the boolean, or `nil` for anything else.
    static func boolean(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "1", "yes", "y", "true", "t", "on": return true
        case "0", "no", "n", "false", "f", "off": return false
        default: return nil
        }
    }

    /// Time units accepted in time spans, in microseconds; the same names as systemd.time(7).
    private static let timeUnits: [String: UInt64] = [
        "us": 1, "usec": 1,
        "ms": 1_000, "msec": 1_000,
        "s": 1_000_000, "sec": 1_000_000, "second": 1_000_000, "seconds": 1_000_000,
        "m": 60_000_000, "min": 60_000_000, "minute": 60_000_000, "minutes": 60_000_000,
        "h": 3_600_000_000, "hr": 3_600_000_000, "hour": 3_600_000_000, "hours": 3_600_000_000,
    ]

    /// Parses a systemd time span: numbers, each with an optional unit (seconds when none), summed,
    /// e.g. `10`, `2.5s`, `500ms`, `1min 30s`. Resolution is one microsecond, as in systemd.
    ///
    /// - Returns: the span in microseconds, or `nil` if the syntax is wrong or it overflows.
    static func timeSpanMicroseconds(_ text: String) -> UInt64? {
        let bytes = Array(text.utf8)
        func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
        func isLetter(_ b: UInt8) -> Bool { (b | 0x20) >= UInt8(ascii: "a") && (b | 0x20) <= UInt8(ascii: "z") }
        func isBlank(_ b: UInt8) -> Bool { b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") }

        var total: UInt64 = 0
        var i = 0
        var components = 0
        while true {
            while i < bytes.count, isBlank(bytes[i]) { i += 1 }
            if i == bytes.count { break }

            let integerStart = i
            while i < bytes.count, isDigit(bytes[i]) { i += 1 }
            let integerDigits = bytes[integerStart..<i]
            var fractionDigits = bytes[i..<i]
            if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
                i += 1
                let fractionStart = i
                while i < bytes.count, isDigit(bytes[i]) { i += 1 }
                fractionDigits = bytes[fractionStart..<i]
            }
            guard !integerDigits.isEmpty || !fractionDigits.isEmpty else { return nil }

            while i < bytes.count, isBlank(bytes[i]) { i += 1 }
            let unitStart = i
            while i < bytes.count, isLetter(bytes[i]) { i += 1 }
            let unitName = String(decoding: bytes[unitStart..<i], as: UTF8.self)
            guard let unit = unitName.isEmpty ? 1_000_000 : timeUnits[unitName] else { return nil }
            // "1min30s" is fine, but a number without unit must end the component: "1.5.2" is wrong.
            if unitName.isEmpty, i < bytes.count, !isBlank(bytes[i]) { return nil }

            var value: UInt64 = 0
            for digit in integerDigits {
                let (times10, o1) = value.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times10.addingReportingOverflow(UInt64(digit - UInt8(ascii: "0")))
                guard !o1, !o2 else { return nil }
                value = sum
            }
            let (scaled, o3) = value.multipliedReportingOverflow(by: unit)
            guard !o3 else { return nil }
            // Like systemd: each fraction digit adds digit * unit / 10^position, so digits
            // finer than a microsecond are dropped.
            var fraction: UInt64 = 0
            var place = unit
            for digit in fractionDigits {
                place /= 10
                fraction += UInt64(digit - UInt8(ascii: "0")) * place
            }
            let (component, o4) = scaled.addingReportingOverflow(fraction)
            let (newTotal, o5) = total.addingReportingOverflow(component)
            guard !o4, !o5 else { return nil }
            total = newTotal
            components += 1
        }
        return components > 0 ? total : nil
    }

    /// Prints a duration as an exact time span in the largest of `Ns`, `Nms`, `Nus` that fits.
    static func formatTimeSpan(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000)
        if overflow { return "\(seconds)s" }
        let micros = scaled + attoseconds / 1_000_000_000_000
        if micros % 1_000_000 == 0 { return "\(micros / 1_000_000)s" }
        if micros % 1_000 == 0 { return "\(micros / 1_000)ms" }
        return "\(micros)us"
    }

    /// The Levenshtein distance between two strings, for "did you mean" hints.
    static func editDistance(_ a: String, _ b: String) -> Int {
        var a = a
        var b = b
        // Key and section names are ASCII, and for two ASCII strings bytes are characters: this
        // runs for every unknown key against every candidate, so it works on the bytes in place.
        if let distance = a.withUTF8({ x in b.withUTF8 { y in asciiEditDistance(x, y) } }) { return distance }
        let x = Array(a)
        let y = Array(b)
        if x.isEmpty { return y.count }
        if y.isEmpty { return x.count }
        var previous = Array(0...y.count)
        var current = [Int](repeating: 0, count: y.count + 1)
        for i in 1...x.count {
            current[0] = i
            for j in 1...y.count {
                let substitution = previous[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1)
                current[j] = min(previous[j] + 1, current[j - 1] + 1, substitution)
            }
            swap(&previous, &current)
        }
        return previous[y.count]
    }

    /// The Levenshtein distance between two ASCII byte strings, or `nil` if either is not ASCII.
    private static func asciiEditDistance(_ x: UnsafeBufferPointer<UInt8>, _ y: UnsafeBufferPointer<UInt8>) -> Int? {
        for byte in x where byte >= 0x80 { return nil }
        for byte in y where byte >= 0x80 { return nil }
        if x.isEmpty { return y.count }
        if y.isEmpty { return x.count }
        let n = y.count
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: 2 * (n + 1)) { rows in
            // Row i - 1 at `previous`, row i at `current`; they swap after each row.
            var previous = 0
            var current = n + 1
            for j in 0...n { rows[previous + j] = j }
            for i in 1...x.count {
                rows[current] = i
                for j in 1...n {
                    let substitution = rows[previous + j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1)
                    rows[current + j] = min(rows[previous + j] + 1, rows[current + j - 1] + 1, substitution)
                }
                swap(&previous, &current)
            }
            return rows[previous + n]
        }
    }

    /// The candidate closest to `text`, if it is within an edit distance of 2.
    static func closest(to text: String, among candidates: some Sequence<String>) -> String? {
        var best: (name: String, distance: Int)?
        // The distance is at least the difference in length: skipping candidates that differ by
        // more than 2 keeps a key name as long as the file from costing length × candidate.
        let length = text.count
        for candidate in candidates where abs(candidate.count - length) <= 2 {
            let distance = editDistance(text, candidate)
            if distance <= 2, distance < best?.distance ?? Int.max { best = (candidate, distance) }
        }
        return best?.name
    }
}
