// SPDX-License-Identifier: Apache-2.0
// Issue 11 item 9: runs on several hosts as one report. `--start-at` begins runs together (no
// byte before the time, the window starting at it), and `echoload merge` adds their results
// exactly: counts and histograms as an in-process merge would, rates over the union of the
// aligned windows.
import EchoCore
import EchoLoad
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct MergeRuns {
    /// How far ahead the tests start their runs: time enough to start echoload and open its
    /// connections on a loaded machine (more under a sanitizer), or the time would be past.
    static let lead: Double = sanitizer == nil ? 3 : 12

    /// A wall-clock time `seconds` from now, whole milliseconds, as RFC 3339.
    static func soon(_ seconds: Double) -> (text: String, wall: Int64) {
        let wall = (WallClock.now() + Int64(seconds * 1e9)) / 1_000_000 * 1_000_000
        return (WallClock.format(wall), wall)
    }

    @Test("--start-at: no byte reaches the server before the time, and the window starts at it",
          .timeLimit(.minutes(2)), arguments: [["--model", "event"], ["--model", "thread"], ["--processes", "2"]])
    func startAtHoldsTrafficBack(layout: [String]) throws {
        let server = try FaultyServer(.none)
        defer { server.stop() }
        let at = Self.soon(Self.lead)
        let atMonotonic = WallClock.monotonic(fromWall: at.wall)
        let run = try echoload(["pingpong", server.address, "-c", "4", "--duration", "300ms", "--warmup", "0",
                                "--start-at", at.text, "--json", "--quiet"] + layout, timeout: 30)
        #expect(run.status == 0, "\(run)")
        let j = try run.json()
        let arrivals = server.events.filter { $0.kind == .arrival && $0.bytes > 0 }
        let first = try #require(arrivals.first, "no traffic at all")
        // The reachability probe sends nothing; the first message may not come before the time
        // (2 ms for the clocks read one after the other).
        #expect(first.time >= atMonotonic - 2_000_000,
                "a message arrived \(Double(atMonotonic - first.time) / 1e6) ms before --start-at")
        #expect(first.time < atMonotonic + 500_000_000, "traffic began \(Double(first.time - atMonotonic) / 1e6) ms late")
        let start = try #require(int(j, "window_start_unix_ns"))
        #expect(abs(start - at.wall) < 50_000_000, "window began \(Double(start - at.wall) / 1e6) ms from --start-at")
        #expect(value(j, "start_at")?.stringValue == at.text)
        if let problem = try schemaViolation(run.stdout) { Issue.record("schema: \(problem)") }
    }

    @Test("--start-at: a time in the past, too far ahead, or not a time is a usage error")
    func startAtBadValues() throws {
        for bad in ["2020-01-01T00:00:00Z", "@1", Self.soon(25 * 3600).text, "tomorrow", "2026-02-30T00:00:00Z",
                    "2026-12-02T16:30:00"] {
            let run = try echoload(["pingpong", "127.0.0.1:7", "--start-at", bad, "--quiet"])
            #expect(run.status == 64, "--start-at \(bad): \(run)")
            #expect(run.stderr.contains("--start-at"), "\(run)")
        }
    }

    @Test("RFC 3339 and @epoch times parse to the right instant; format round-trips")
    func wallClockParsing() {
        #expect(WallClock.parse("1970-01-01T00:00:00Z") == 0)
        #expect(WallClock.parse("2000-03-01T00:00:00Z") == 951_868_800_000_000_000)
        #expect(WallClock.parse("2026-12-02T16:30:00.25Z") == 1_796_229_000_250_000_000)
        #expect(WallClock.parse("2026-12-02T17:30:00+01:00") == WallClock.parse("2026-12-02T16:30:00Z"))
        #expect(WallClock.parse("2026-12-02T15:00:00-01:30") == WallClock.parse("2026-12-02T16:30:00Z"))
        #expect(WallClock.parse("2024-02-29T12:00:00Z") != nil)
        #expect(WallClock.parse("2023-02-29T12:00:00Z") == nil)
        #expect(WallClock.parse("@1796229000.5") == 1_796_229_000_500_000_000)
        #expect(WallClock.parse("2026-12-02T16:30:00.Z") == nil)
        #expect(WallClock.parse("2026-12-02T24:00:00Z") == nil)
        #expect(WallClock.parse("@-5") == nil)
        #expect(WallClock.format(1_796_229_000_250_000_000) == "2026-12-02T16:30:00.250Z")
        for t: Int64 in [0, 951_868_800_123_000_000, 4_102_444_799_999_000_000] {
            #expect(WallClock.parse(WallClock.format(t)) == t)
        }
    }

    /// Two runs started together (one of them itself split over two processes) merged: every
    /// count is the sum, the latency histogram is the exact merge of the two (the percentiles
    /// match an in-process merge of their tallies), the window is their union.
    @Test("merge of two runs adds counts and histograms exactly, over the aligned window",
          .timeLimit(.minutes(2)))
    func mergeTwoRuns() throws {
        let server = try Echod()
        let dir = try TempDir()
        let at = Self.soon(Self.lead)
        let common = ["--duration", "1s", "--warmup", "0", "--start-at", at.text, "--json", "--quiet"]
        let a = try Child(Binaries.echoload, ["pingpong", server.address, "-c", "3", "--size", "100"] + common,
                          stdoutPath: dir.file("a.json"), stderrPath: dir.file("a.err"))
        let b = try Child(Binaries.echoload, ["pingpong", server.address, "-c", "4", "--processes", "2", "--size", "100"]
                          + common, stdoutPath: dir.file("b.json"), stderrPath: dir.file("b.err"))
        #expect(a.wait(seconds: 30) == 0, "\(a.stderr)")
        #expect(b.wait(seconds: 30) == 0, "\(b.stderr)")
        let ja = try JSONValue(parsing: a.stdout)
        let jb = try JSONValue(parsing: b.stdout)
        let merged = try echoload(["merge", dir.file("a.json"), dir.file("b.json"), "--json"])
        #expect(merged.status == 0, "\(merged)")
        let m = try merged.json()
        for path in ["traffic.messages", "traffic.bytes_sent", "traffic.bytes_received", "connections.established",
                     "connections.requested", "latency_us.count"] {
            #expect(int(m, path) == (int(ja, path) ?? -1) + (int(jb, path) ?? -1), "\(path)")
        }
        #expect(m["parts"]?.arrayValue?.count == 3)
        #expect(int(m, "merged.runs") == 2)
        let spread = value(m, "merged.window_start_spread_seconds")?.doubleValue ?? 99
        #expect(spread < 0.05, "windows began \(spread) s apart")
        let seconds = value(m, "traffic.measured_seconds")?.doubleValue ?? 0
        #expect(seconds >= 1.0 && seconds < 1.06, "merged window \(seconds) s")
        // The exact histogram: the merged percentiles are those of both tallies merged in-process.
        var expected = Tally(wire: try #require(value(ja, "exact.tally")))
        expected.merge(Tally(wire: try #require(value(jb, "exact.tally"))))
        let h = try #require(expected.latency)
        for (key, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
            let us = (Double(p == 100 ? h.max : h.valueAtPercentile(p)) / 1000 * 1000).rounded() / 1000
            #expect(value(m, "latency_us.\(key)")?.doubleValue == us, "\(key)")
        }
        #expect(value(m, "clean")?.boolValue == true)
        if let problem = try schemaViolation(merged.stdout) { Issue.record("schema: \(problem)") }
        // A merge of a merge counts the runs inside it.
        let again = try echoload(["merge", "-", dir.file("a.json"), "--json"].map { $0 == "-" ? try! dir.write("m.json", merged.stdout) : $0 })
        #expect(int(try again.json(), "merged.runs") == 3, "\(again)")
    }

    @Test("merge refuses foreign files and mixed workloads with the file's name, exit 64")
    func mergeRefusesBadInput() throws {
        let server = try Echod()
        let dir = try TempDir()
        let ping = try echoload(["pingpong", server.address, "--duration", "200ms", "--warmup", "0", "--json", "--quiet"])
        let stream = try echoload(["stream", server.address, "--duration", "200ms", "--warmup", "0", "--json", "--quiet"])
        let p = try dir.write("ping.json", ping.stdout)
        let s = try dir.write("stream.json", stream.stdout)
        let garbage = try dir.write("garbage.json", "{\"not\": \"echoload\"}")
        let notJSON = try dir.write("text.json", "echoload pingpong ...")
        let fifo = dir.file("fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        let cases: [([String], String)] = [
            ([p, s], "stream.json"), ([p, garbage], "garbage.json"), ([notJSON], "text.json"),
            ([p, dir.file("missing.json")], "missing.json"), ([fifo], "fifo"),
        ]
        for (files, name) in cases {
            let run = try echoload(["merge"] + files, timeout: 10)
            #expect(run.status == 64, "\(files): \(run)")
            #expect(run.stderr.contains(name), "\(files): \(run)")
        }
    }
}
