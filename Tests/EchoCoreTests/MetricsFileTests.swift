// SPDX-License-Identifier: Apache-2.0

import Foundation
import Glibc
import Testing

@testable import EchoCore

@Suite struct MetricsFileTests {
    /// Every family has HELP, TYPE and one sample, in the text format's grammar; counters end
    /// in `_total`; the values are the snapshot's.
    @Test func rendersEveryFigureInTheTextFormat() throws {
        var s = ServerSnapshot()
        s.accepted = 1234
        s.open = 56
        s.bytesEchoed = 7_890_123
        s.acceptBackoffs = 9
        var refusals = SourceTable.Refusals()
        (refusals.perSource, refusals.rate, refusals.tableFull) = (5, 6, 7)
        let text = MetricsFile.render(
            s, model: "thread", version: "0.2.0 (abc)", startTime: 1_700_000_000.25, idleTimeouts: 3, sendTimeouts: 4,
            refusals: refusals)
        #expect(text.hasSuffix("\n"))
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        var samples: [String: String] = [:]
        var types: [String: String] = [:]
        var helped: Set<String> = []
        let name = try Regex("^[a-zA-Z_:][a-zA-Z0-9_:]*$")
        for line in lines {
            let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
            if line.hasPrefix("# HELP ") {
                helped.insert(parts[2])
            } else if line.hasPrefix("# TYPE ") {
                #expect(["counter", "gauge"].contains(parts[3]))
                types[parts[2]] = parts[3]
            } else {
                let metric = String(line.prefix { $0 != " " && $0 != "{" })
                #expect(metric.wholeMatch(of: name) != nil, "bad metric name in \(line)")
                #expect(types[metric] != nil, "\(metric) sampled before its TYPE line")
                samples[metric] = String(line.split(separator: " ").last!)
            }
        }
        #expect(Set(types.keys) == helped)
        #expect(Set(types.keys) == Set(samples.keys))
        for (metric, type) in types where type == "counter" {
            #expect(metric.hasSuffix("_total"), "counter \(metric) must end in _total")
        }
        #expect(samples["echod_connections_accepted_total"] == "1234")
        #expect(samples["echod_connections_open"] == "56")
        #expect(samples["echod_echoed_bytes_total"] == "7890123")
        #expect(samples["echod_accept_backoffs_total"] == "9")
        #expect(samples["echod_start_time_seconds"] == "1700000000.250")
        #expect(text.contains("echod_info{version=\"0.2.0 (abc)\",model=\"thread\"} 1\n"))
        #expect(text.contains("echod_connections_timed_out_total{timeout=\"idle\"} 3\n"))
        #expect(text.contains("echod_connections_timed_out_total{timeout=\"send\"} 4\n"))
        #expect(text.contains("echod_connections_refused_total{reason=\"per_source\"} 5\n"))
        #expect(text.contains("echod_connections_refused_total{reason=\"rate\"} 6\n"))
        #expect(text.contains("echod_connections_refused_total{reason=\"source_table_full\"} 7\n"))
    }

    @Test func escapesLabelValues() {
        #expect(MetricsFile.escapeLabel(#"a"b\c"# + "\nd") == #"a\"b\\c\nd"#)
    }

    @Test func secondsKeepTheirMilliseconds() {
        #expect(MetricsFile.formatSeconds(12.005) == "12.005")
        #expect(MetricsFile.formatSeconds(12.05) == "12.050")
        #expect(MetricsFile.formatSeconds(0) == "0.000")
    }

    @Test func runtimeDirectoryNamesTheFile() {
        #expect(MetricsFile.inRuntimeDirectory(environment: [:]) == nil)
        #expect(MetricsFile.inRuntimeDirectory(environment: ["RUNTIME_DIRECTORY": ""]) == nil)
        #expect(
            MetricsFile.inRuntimeDirectory(environment: ["RUNTIME_DIRECTORY": "/run/echod:/run/other"])?.path
                == "/run/echod/echod.prom")
    }

    /// A reader polling the file while it is rewritten sees only whole files (the old or the
    /// new), readable by others whatever the umask, and nothing is left behind after `remove`.
    @Test func replacesAtomicallyAndRemoves() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = MetricsFile(path: dir.appendingPathComponent(MetricsFile.fileName).path)
        let old = umask(0o077)
        defer { umask(old) }
        // Two contents of different lengths, both large enough to take several writes to copy.
        let a = String(repeating: "a", count: 300_000) + "\nEND-A\n"
        let b = String(repeating: "b", count: 200_000) + "\nEND-B\n"
        try file.replace(with: a)
        var st = stat()
        #expect(stat(file.path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o644)
        let done = ManagedAtomicFlag()
        let writer = Thread {
            for i in 0..<200 { try? file.replace(with: i % 2 == 0 ? b : a) }
            done.set()
        }
        writer.start()
        var reads = 0
        while !done.isSet {
            if let text = try? String(contentsOfFile: file.path, encoding: .utf8) {
                #expect(text == a || text == b, "a partial file (\(text.utf8.count) bytes)")
                reads += 1
            }
        }
        #expect(reads > 0)
        file.remove()
        #expect(access(file.path, F_OK) != 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
    }

    @Test func unwritableDirectoryIsAnError() {
        let file = MetricsFile(path: "/nonexistent-dir-\(getpid())/echod.prom")
        #expect(throws: SystemError.self) { try file.replace(with: "x\n") }
    }
}

/// A flag set by one thread and read by another.
private final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}
