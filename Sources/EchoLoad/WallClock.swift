// SPDX-License-Identifier: Apache-2.0
// Wall-clock times, for what crosses hosts: `--start-at` (runs on several hosts begin together)
// and the measured window's start in a report (`echoload merge` aligns runs by it). Everything
// inside a run stays on CLOCK_MONOTONIC; these convert at the edges.
import EchoCore
import Glibc

public enum WallClock {
    /// CLOCK_REALTIME in nanoseconds since the Unix epoch.
    public static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// The CLOCK_MONOTONIC time that corresponds to wall-clock time `wall` (read both clocks now).
    public static func monotonic(fromWall wall: Int64) -> Int64 {
        let m = monotonicNanoseconds()
        return m + (wall - now())
    }

    /// The wall-clock time that corresponds to CLOCK_MONOTONIC time `mono`.
    public static func wall(fromMonotonic mono: Int64) -> Int64 {
        let m = monotonicNanoseconds()
        return now() - (m - mono)
    }

    /// Parses `--start-at`: RFC 3339 (`2026-12-02T16:30:00Z`, fractional seconds and a `+HH:MM`
    /// offset allowed; a space for the `T` too) or `@SECONDS` since the epoch (fraction allowed).
    /// - Returns: nanoseconds since the epoch, or nil if `text` is neither.
    public static func parse(_ text: String) -> Int64? {
        if text.hasPrefix("@") {
            guard let v = Double(text.dropFirst()), v.isFinite, v >= 0, v < 1e10 else { return nil }
            return Int64((v * 1e9).rounded())
        }
        let b = Array(text.utf8)
        func digits(_ at: Int, _ n: Int) -> Int? {
            guard at + n <= b.count else { return nil }
            var v = 0
            for i in at..<at + n {
                guard b[i] >= 0x30 && b[i] <= 0x39 else { return nil }
                v = v * 10 + Int(b[i] - 0x30)
            }
            return v
        }
        guard b.count >= 20, let year = digits(0, 4), b[4] == UInt8(ascii: "-"), let month = digits(5, 2),
            b[7] == UInt8(ascii: "-"), let day = digits(8, 2), b[10] == UInt8(ascii: "T") || b[10] == UInt8(ascii: "t")
                || b[10] == UInt8(ascii: " "),
            let hour = digits(11, 2), b[13] == UInt8(ascii: ":"), let minute = digits(14, 2),
            b[16] == UInt8(ascii: ":"), let second = digits(17, 2),
            (1970...9999).contains(year), (1...12).contains(month), (1...31).contains(day), hour < 24,
            minute < 60, second < 61
        else { return nil }
        var i = 19
        var fraction: Int64 = 0
        if i < b.count && b[i] == UInt8(ascii: ".") {
            i += 1
            var scale: Int64 = 100_000_000
            let start = i
            while i < b.count, b[i] >= 0x30 && b[i] <= 0x39 {
                fraction += Int64(b[i] - 0x30) * scale
                scale /= 10
                i += 1
            }
            guard i > start else { return nil }
        }
        var offset = 0
        guard i < b.count else { return nil }
        if b[i] == UInt8(ascii: "Z") || b[i] == UInt8(ascii: "z") {
            i += 1
        } else if b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") {
            guard let oh = digits(i + 1, 2), i + 3 < b.count, b[i + 3] == UInt8(ascii: ":"), let om = digits(i + 4, 2),
                oh < 24, om < 60
            else { return nil }
            offset = (oh * 60 + om) * 60 * (b[i] == UInt8(ascii: "-") ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        guard i == b.count, day <= daysIn(month: month, year: year) else { return nil }
        let seconds = Int64(daysFromEpoch(year: year, month: month, day: day)) * 86_400
            + Int64(hour * 3600 + minute * 60 + second) - Int64(offset)
        return seconds * 1_000_000_000 + fraction
    }

    /// RFC 3339 in UTC with milliseconds: `2026-12-02T16:30:00.000Z`.
    public static func format(_ wall: Int64) -> String {
        let ms = wall >= 0 ? wall / 1_000_000 : (wall - 999_999) / 1_000_000
        var days = ms >= 0 ? ms / 86_400_000 : (ms - 86_399_999) / 86_400_000
        let inDay = ms - days * 86_400_000
        // Civil from days (Howard Hinnant's algorithm).
        days += 719_468
        let era = (days >= 0 ? days : days - 146_096) / 146_097
        let doe = days - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func pad(_ v: Int64, _ n: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, n - s.count)) + s
        }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(inDay / 3_600_000, 2)):\(pad(inDay / 60_000 % 60, 2)):"
            + "\(pad(inDay / 1000 % 60, 2)).\(pad(inDay % 1000, 3))Z"
    }

    private static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to the date (proleptic Gregorian).
    private static func daysFromEpoch(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = y / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}

extension LoadResult {
    /// Records when the measured window began on the wall clock, from the run's start `startedAt`
    /// (CLOCK_MONOTONIC; 0: never started), and how late that was against `--start-at`.
    mutating func setWindow(startedAt: Int64, startAtMonotonic: Int64?) {
        guard startedAt != 0 else { return }
        windowStartWall = WallClock.wall(fromMonotonic: startedAt + options.warmup)
        if let at = startAtMonotonic { startLateNanos = max(0, startedAt - at) }
    }
}
