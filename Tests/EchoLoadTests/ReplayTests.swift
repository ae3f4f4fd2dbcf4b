// SPDX-License-Identifier: Apache-2.0
// Issue 11 item 5: a server that replays old data is caught. The old pattern repeated every
// 65,521 bytes (and its seeds every 65,521 connections), so a server that sent back, from some
// offset on, what it had received exactly 65,521 bytes earlier passed every check.
import EchoCore
import EchoLoad
import Glibc
import Testing

@Suite(.serialized) struct Replays {
    @Test("a server replaying data from exactly one old pattern period back is caught",
          .timeLimit(.minutes(2)),
          arguments: [["stream", "--size", "16384"], ["pingpong", "--size", "8192"]], [ClientModel.event, .thread])
    func replayFromOnePeriodBackIsCaught(workload: [String], model: ClientModel) throws {
        let server = try FaultyServer(.replayOld, replayDistance: 65_521)
        defer { server.stop() }
        let run = try echoload([workload[0], server.address] + workload.dropFirst()
                               + ["-c", "2", "--duration", "500ms", "--warmup", "0", "--json", "--quiet",
                                  "--drain-timeout", "500ms", "--model", model.rawValue], timeout: 30)
        #expect(run.status == 1, "\(run)")
        let j = try run.json()
        #expect((int(j, "errors.mismatches") ?? 0) > 0, "\(run)")
        // The first wrong byte is a replayed one (the replay begins at byte 65,521).
        let first = value(j, "errors.first")?.stringValue ?? ""
        let position = first.range(of: "byte ").flatMap { Int(first[$0.upperBound...].prefix { $0.isNumber }) } ?? -1
        #expect(position >= 65_521, "\(run)")
    }
}
