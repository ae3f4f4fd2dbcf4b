// SPDX-License-Identifier: Apache-2.0
// Behaviours that were wrong once, each with the run that showed it: stream writes larger than
// --size in the event model, a rate run past saturation reporting no message at all, and a run
// ending unclean with no error counted and no word on why.
import EchoCore
import EchoLoad
import Glibc
import Testing

@Suite(.serialized) struct KnownBugs {
    /// The event model wrote up to 1 MiB per send in stream mode, whatever --size said.
    @Test("stream: every send carries at most one message of --size", arguments: [ClientModel.event, .thread])
    func streamWritesMessagesOfSize(model: ClientModel) throws {
        let echod = try Echod()
        let run = try echoload(["stream", echod.address, "-c", "2", "--size", "100", "--duration", "300ms",
                                "--warmup", "100ms", "--json", "--quiet", "--model", model.rawValue])
        try expectConsistent(run, mode: .stream, connections: 2, size: 100)
        #expect(int(try run.json(), "traffic.largest_write_bytes") == 100, "\(run)")
    }

    /// Far past saturation the warm-up's backlog filled the window: every message sent in it was
    /// intended in the warm-up, so none counted (0 messages, and the run called unclean).
    @Test("rate far past saturation reports what was done and the missed target", .timeLimit(.minutes(2)),
          arguments: [ClientModel.event, .thread])
    func rateFarPastSaturation(model: ClientModel) throws {
        let echod = try Echod()
        let run = try echoload(["rate", echod.address, "-c", "2", "--rate", "1000000000/s", "--size", "64",
                                "--warmup", "300ms", "--duration", "500ms", "--drain-timeout", "1s", "--quiet",
                                "--model", model.rawValue, "--json"], timeout: 60)
        #expect(run.status == 0, "\(run)")
        let j = try run.json()
        let messages = int(j, "traffic.messages") ?? 0
        #expect(messages > 0, "\(run)")
        #expect(int(j, "latency_us.count") == messages)
        #expect(int(j, "errors.total") == 0)
        let issued = int(j, "traffic.issued_messages") ?? -1
        let scheduled = int(j, "traffic.scheduled_messages") ?? -1
        #expect(issued > 0 && issued < scheduled / 100, "issued \(issued) of \(scheduled)")
        if let problem = try schemaViolation(run.stdout) { Issue.record("schema: \(problem)") }
        let table = try echoload(["rate", echod.address, "-c", "1", "--rate", "1000000000/s", "--warmup", "200ms",
                                  "--duration", "300ms", "--drain-timeout", "1s", "--quiet", "--model", model.rawValue],
                                 timeout: 60)
        #expect(table.stdout.contains("target missed"), "\(table)")
        #expect(!table.stdout.contains(": 0 messages"), "\(table)")
    }

    /// Every unclean end names its reason, in --json and in the table, even with no error counted:
    /// here half the connections cannot bind their source address (192.0.2.1 is not local).
    @Test("an unclean run with no error counted says why")
    func uncleanRunsSayWhy() throws {
        let echod = try Echod()
        let args = ["hold", echod.address, "-c", "10", "--duration", "100ms", "--quiet",
                    "--source", "127.0.0.1,192.0.2.1"]
        let run = try echoload(args + ["--json"])
        #expect(run.status == 1, "\(run)")
        let j = try run.json()
        #expect(int(j, "errors.total") == 0, "\(run)")
        #expect(value(j, "clean") == .bool(false))
        let reasons = value(j, "unclean_reasons")?.arrayValue?.compactMap(\.stringValue) ?? []
        #expect(reasons == ["5 of 10 connections not established (EADDRNOTAVAIL 5)"], "\(run)")
        if let problem = try schemaViolation(run.stdout) { Issue.record("schema: \(problem)") }
        let text = try echoload(args)
        #expect(text.status == 1)
        #expect(text.stdout.contains("result       FAILED: 5 of 10 connections not established (EADDRNOTAVAIL 5)"), "\(text)")
        #expect(text.stderr.contains("run not clean: 5 of 10"), "\(text)")
        // A clean run says so with an empty list.
        let clean = try echoload(["hold", echod.address, "-c", "3", "--duration", "100ms", "--quiet", "--json"])
        #expect(value(try clean.json(), "unclean_reasons") == .array([]), "\(clean)")
        // The rate shortfall: no error either, the reason names --fail-under-rate.
        let missed = try echoload(["rate", echod.address, "-c", "1", "--rate", "1000000000/s", "--warmup", "0",
                                   "--duration", "300ms", "--drain-timeout", "500ms", "--quiet", "--json",
                                   "--fail-under-rate", "90%"], timeout: 60)
        let why = value(try missed.json(), "unclean_reasons")?.arrayValue?.compactMap(\.stringValue) ?? []
        #expect(missed.status == 1 && why.count == 1 && why[0].contains("under --fail-under-rate 90.0%"), "\(missed)")
    }
}
