// SPDX-License-Identifier: Apache-2.0
// Issue 11 item 12: `echoload sweep`, the seed's second test as one command: a grid of ping-pong
// points plus a stream point, repeated, medians, every byte verified, optionally against a
// baseline measured alternately; a table, --json and an SVG chart.
import EchoCore
import EchoLoad
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct SweepTests {
    static let quick = ["--duration", "200ms", "--warmup", "50ms", "--quiet"]

    @Test("sweep measures every point of the grid and the stream point, against a baseline too",
          .timeLimit(.minutes(2)))
    func gridWithBaseline() throws {
        let target = try Echod(model: .event)
        let baseline = try Echod(model: .thread)
        let dir = try TempDir()
        let chart = dir.file("sweep.svg")
        let run = try echoload(["sweep", target.address, "--sizes", "64,4096", "-c", "1,3", "--stream-connections", "2",
                                "--stream-size", "16384", "--repeat", "2", "--baseline", baseline.address,
                                "--chart", chart, "--json"] + Self.quick, timeout: 100)
        #expect(run.status == 0, "\(run)")
        let j = try run.json()
        let points = try #require(j["points"]?.arrayValue)
        #expect(points.count == 5)
        let labels = points.map { "\($0["mode"]?.stringValue ?? "?") \(int($0, "size") ?? 0)×\(int($0, "connections") ?? 0)" }
        #expect(labels == ["pingpong 64×1", "pingpong 64×3", "pingpong 4096×1", "pingpong 4096×3", "stream 16384×2"])
        for p in points {
            #expect(p["runs"]?.arrayValue?.count == 2)
            #expect(p["baseline_runs"]?.arrayValue?.count == 2)
            let mbps = value(p, "median.megabytes_per_second")?.doubleValue ?? 0
            let base = value(p, "baseline_median.megabytes_per_second")?.doubleValue ?? 0
            #expect(mbps > 0 && base > 0, "\(p.text)")
            let ratio = value(p, "ratio")?.doubleValue ?? 0
            #expect(abs(ratio - mbps / base) < 0.01 * ratio + 0.002, "ratio \(ratio) vs \(mbps)/\(base)")
            if p["mode"]?.stringValue == "pingpong" {
                #expect((value(p, "median.p99_us")?.doubleValue ?? 0) > 0)
            } else {
                #expect(value(p, "median.messages_per_second") == .null)
            }
        }
        #expect(j["clean"]?.boolValue == true)
        let svg = try String(contentsOfFile: chart, encoding: .utf8)
        #expect(svg.hasPrefix("<svg"))
        #expect(svg.components(separatedBy: "<rect").count - 1 == 5 * 2 + 2, "two bars per point and the legend")
    }

    @Test("a point with faults marks the sweep not clean (exit 1), naming the point")
    func faultsFailTheSweep() throws {
        let server = try FaultyServer(.flipByte)
        defer { server.stop() }
        let run = try echoload(["sweep", server.address, "--sizes", "4096", "-c", "1", "--stream-connections", "0",
                                "--repeat", "1"] + Self.quick, timeout: 60)
        #expect(run.status == 1, "\(run)")
        #expect(run.stdout.contains("4 KiB × 1") && run.stdout.contains("NOT CLEAN"), "\(run)")
    }

    @Test("bad grids are usage errors")
    func badFlags() throws {
        for args in [["--sizes", "0"], ["--sizes", "64,x"], ["-c", ""], ["--repeat", "0"], ["--duration", "10ms"],
                     ["--start-at", "@9999999999"], ["--sizes", "", "--stream-connections", "0"]] {
            let run = try echoload(["sweep", "127.0.0.1:7"] + args + ["--quiet"], timeout: 20)
            #expect(run.status == 64, "\(args): \(run)")
        }
    }
}
