// SPDX-License-Identifier: Apache-2.0
// Issue 11 item 4: a split run's child gets its options on a pipe, so a --source list of tens of
// thousands of addresses reaches every child (as an argv string it failed with E2BIG at about
// 10,000 addresses); and the number of source addresses is bounded with a clear error.
import EchoCore
import EchoLoad
import Glibc
import Testing

@Suite(.serialized) struct ChildSpecs {
    @Test("10,000+ source addresses with --processes: every child gets them, the run is clean", .timeLimit(.minutes(2)))
    func manySourcesWithProcesses() throws {
        let echod = try Echod()
        // 127.0.0.2 … 127.0.40.250: 10,489 addresses, about 150 KB of spec per child.
        let sources = "127.0.0.2-127.0.40.250"
        let expected = try LoadParsing.sources(sources).count
        #expect(expected > 10_000)
        let run = try echoload(shortRun(.hold, echod.address, connections: 300) + ["--processes", "2", "--source", sources],
                               timeout: 90)
        try expectConsistent(run, mode: .hold, connections: 300, size: 16)
        #expect(try run.json()["options"]?["sources"]?.intValue == Int64(expected))
    }

    @Test func tooManySourceAddressesIsOneLine() throws {
        // Two ranges, each within the per-range bound, 69,632 addresses together.
        let run = try echoload(["hold", "127.0.0.1:7", "-c", "2", "--source", "127.1.0.0-127.1.255.255,127.2.0.0-127.2.15.255"])
        #expect(run.status == 64, "\(run)")
        #expect(run.stderr.hasPrefix("echoload: --source: 69632 addresses; at most 65536"), "\(run)")
        #expect(run.stderr.split(separator: "\n").count == 1 && run.stdout.isEmpty, "\(run)")
    }
}
