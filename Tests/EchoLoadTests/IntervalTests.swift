// SPDX-License-Identifier: Apache-2.0
// Issue 11 item 8: the measured window in intervals (`--interval`: rate, bytes, faults, closed
// connections, latency percentiles per interval in --json) and `--latency-log` (the intervals'
// latency histograms as an HdrHistogram interval log). The intervals partition the window: their
// counts add up exactly to the run's, in every client model and across processes; the log's
// histograms hold every latency sample the run recorded. (The log was also read with the
// HdrHistogram Python implementation's HistogramLogReader when this was written: same totals.)
import EchoCore
import EchoLoad
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct Intervals {
    @Test("--interval: the intervals partition the window, in every client model and across processes",
          .timeLimit(.minutes(2)), arguments: [
              (["pingpong", "--model", "event"], "messages"), (["pingpong", "--model", "thread"], "messages"),
              (["rate", "--rate", "3000/s", "--processes", "2"], "messages"), (["stream", "--size", "16384"], "bytes"),
              (["stream", "--model", "thread", "--processes", "2", "--size", "16384"], "bytes"),
          ])
    func intervalsAddUp(mode: [String], unit: String) throws {
        let server = try Echod()
        let run = try echoload([mode[0], server.address] + mode.dropFirst() + ["-c", "4", "--duration", "1200ms",
                               "--warmup", "200ms", "--interval", "300ms", "--json", "--quiet"], timeout: 60)
        #expect(run.status == 0, "\(run)")
        let j = try run.json()
        let series = try #require(value(j, "intervals.series")?.arrayValue, "\(run.stdout)")
        #expect(value(j, "intervals.seconds")?.doubleValue == 0.3)
        #expect(series.count == 4, "\(series.count) intervals of 300 ms in 1.2 s")
        func sum(_ key: String) -> Int64 { series.reduce(0) { $0 + (int($1, key) ?? 0) } }
        if unit == "messages" {
            #expect(sum("messages") == int(j, "traffic.messages"))
            #expect(sum("messages") > 0)
            for s in series where (int(s, "messages") ?? 0) > 0 {
                #expect((value(s, "p99_us")?.doubleValue ?? 0) > 0)
            }
        }
        #expect(sum("bytes_received") == int(j, "traffic.bytes_received"))
        #expect(sum("bytes_sent") == int(j, "traffic.bytes_sent"))
        #expect(sum("faults") == 0)
        for (k, s) in series.enumerated() {
            #expect(abs((value(s, "start_seconds")?.doubleValue ?? -1) - Double(k) * 0.3) < 1e-9)
            #expect((int(s, "bytes_received") ?? 0) > 0, "interval \(k) empty: \(s.text)")
        }
        if let problem = try schemaViolation(run.stdout) { Issue.record("schema: \(problem)") }
    }

    @Test("--latency-log writes an HdrHistogram interval log holding every latency sample", .timeLimit(.minutes(1)))
    func latencyLogHoldsEverySample() throws {
        let server = try Echod()
        let dir = try TempDir()
        let log = dir.file("latency.hlog")
        let run = try echoload(["pingpong", server.address, "-c", "3", "--duration", "1s", "--warmup", "100ms",
                                "--latency-log", log, "--json", "--quiet"], timeout: 30)
        #expect(run.status == 0, "\(run)")
        let j = try run.json()
        #expect(value(j, "intervals.seconds")?.doubleValue == 1.0, "--latency-log alone: 1 s intervals")
        let text = try String(contentsOfFile: log, encoding: .utf8)
        let lines = text.split(separator: "\n")
        #expect(lines.first == "#[Histogram log format version 1.3]")
        #expect(lines.contains { $0.hasPrefix("#[StartTime: ") })
        #expect(lines.contains("\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""))
        let data = lines.filter { !$0.hasPrefix("#") && !$0.hasPrefix("\"") }
        #expect(data.count == 1)
        var total: UInt64 = 0
        for line in data {
            let fields = line.split(separator: ",")
            try #require(fields.count == 4, "\(line)")
            let h = try #require(HistogramCodec.decode(String(fields[3])), "undecodable: \(line)")
            total += h.totalCount
            // Interval_Max is the interval's largest latency in milliseconds.
            let maxMs = Double(h.max) / 1e6
            #expect(abs((Double(fields[2]) ?? -1) - maxMs) < 0.001, "\(line)")
        }
        #expect(Int64(total) == int(j, "latency_us.count"))
    }

    @Test("--interval and --latency-log refuse what they cannot do")
    func badValues() throws {
        for args in [["pingpong", "--interval", "5ms"], ["stream", "--latency-log", "/tmp/x"],
                     ["hold", "--interval", "1s"], ["pingpong", "--interval", "1ms", "--duration", "10m"],
                     ["pingpong", "--interval", "soon"]] {
            let run = try echoload([args[0], "127.0.0.1:7"] + args.dropFirst() + ["--quiet"], timeout: 20)
            #expect(run.status == 64, "\(args): \(run)")
        }
        let server = try Echod()
        let run = try echoload(["pingpong", server.address, "--duration", "200ms", "--latency-log", "/nonexistent/dir/x.hlog", "--quiet"])
        #expect(run.status == 3, "\(run)")
        #expect(run.stderr.contains("/nonexistent/dir/x.hlog"))
    }
}
