// SPDX-License-Identifier: Apache-2.0
// The `STATUS=` line systemctl status shows: the model's summary, its totals, and the echo rate
// since the previous line.

/// Formats the `STATUS=` line, with the echo rate since the previous line.
struct StatusReporter {
    let summary: String
    private var lastBytes: UInt64 = 0
    private var lastTime = monotonicNanoseconds()

    init(summary: String) {
        self.summary = summary
    }

    mutating func line(_ s: ServerSnapshot, refusals: SourceTable.Refusals = .init()) -> String {
        let now = monotonicNanoseconds()
        let seconds = Double(max(1, now - lastTime)) / 1e9
        let rate = Double(s.bytesEchoed &- lastBytes) / seconds
        lastBytes = s.bytesEchoed
        lastTime = now
        return "\(summary): \(s.open) open, \(s.accepted) accepted, "
            + "\(formatBytes(Double(s.bytesEchoed))) echoed, \(formatBytes(rate))/s"
            + ConnectionTimeouts.shared.statusSuffix + refusals.statusSuffix + DatagramShared.shared.statusSuffix
    }
}

/// `1.5 MiB`-style binary units.
func formatBytes(_ bytes: Double) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = bytes
    var i = 0
    while v >= 1024 && i < units.count - 1 {
        v /= 1024
        i += 1
    }
    if i == 0 { return "\(Int(v)) B" }
    let tenths = Int((v * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) \(units[i])"
}
