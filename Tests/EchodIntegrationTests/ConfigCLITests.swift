// SPDX-License-Identifier: Apache-2.0
// The configuration through echod's command line: --check-config, error reporting as
// PATH:LINE: message with exit status 78, drop-in order, and refusing to start.
import Foundation
import Testing

/// Settings printed by --check-config, by key. Accepts "Key=Value", "Key = Value" and
/// "Key: Value" lines, ignores [Section] headers and comments; a key printed several
/// times (Listen=) keeps every value in order.
func effectiveSettings(_ output: String) -> [String: [String]] {
    var settings: [String: [String]] = [:]
    for raw in output.split(separator: "\n") {
        let line = raw.trimmingCharacters(in: .whitespaces)
        if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") || line.hasPrefix("[") { continue }
        guard let separator = line.firstIndex(where: { $0 == "=" || $0 == ":" }) else { continue }
        let key = line[..<separator].trimmingCharacters(in: .whitespaces)
        let value = line[line.index(after: separator)...].trimmingCharacters(in: .whitespaces)
        settings[key, default: []].append(value)
    }
    return settings
}

/// Whether a printed setting means `seconds` seconds: "7" or a systemd time span "7s".
func isSeconds(_ values: [String]?, _ seconds: Int) -> Bool {
    values == ["\(seconds)"] || values == ["\(seconds)s"]
}

extension EchodIntegration {
    @Suite struct ConfigCLI {
        @Test func checkConfigPrintsTheEffectiveConfiguration() throws {
            try withTempDir { dir in
                let config = try dir.write(
                    "echod.conf",
                    Echod.config(listen: ["127.0.0.1:0"], workers: 3, maxConnections: "auto", stopTimeoutSec: 7, noFile: 3000))
                let run = try Echod.run(["--config", config, "--check-config"], in: dir)
                #expect(run.status == .exited(0), "stderr: \(run.stderr)")
                let settings = effectiveSettings(run.stdout)
                let expected: [(String, String)] = [
                    ("Model", "event"), ("Listen", "127.0.0.1:0"), ("Workers", "3"), ("MaxConnections", "auto"), ("NoFile", "3000"),
                ]
                for (key, value) in expected {
                    #expect(settings[key]?.contains(value) == true, "\(key)=\(value) missing from --check-config output:\n\(run.stdout)")
                }
                #expect(isSeconds(settings["StopTimeoutSec"], 7), "StopTimeoutSec=7 missing from --check-config output:\n\(run.stdout)")
            }
        }

        @Test func badFileReportsEveryErrorWithFileAndLine() throws {
            try withTempDir { dir in
                let config = try dir.write(
                    "echod.conf",
                    """
                    [Server]
                    Model=event
                    Modle=event
                    Listen=127.0.0.1:0
                    [Limits]
                    NoFile=banana

                    """)
                let run = try Echod.run(["--config", config, "--check-config"], in: dir)
                #expect(run.status == .exited(Echod.configErrorStatus), "stdout: \(run.stdout) stderr: \(run.stderr)")
                let lines = run.stderr.split(separator: "\n")
                #expect(lines.contains { $0.contains("\(config):3: ") && $0.contains("Modle") }, "stderr:\n\(run.stderr)")
                #expect(lines.contains { $0.contains("\(config):6: ") }, "stderr:\n\(run.stderr)")
            }
        }

        @Test func errorInDropInNamesTheDropInFile() throws {
            try withTempDir { dir in
                let config = try dir.write("echod.conf", Echod.config())
                let dropIn = try dir.write("echod.conf.d/50-bad.conf", "[Server]\nWorkers=many\n")
                let run = try Echod.run(["--config", config, "--check-config"], in: dir)
                #expect(run.status == .exited(Echod.configErrorStatus), "stdout: \(run.stdout) stderr: \(run.stderr)")
                #expect(run.stderr.split(separator: "\n").contains { $0.contains("\(dropIn):2: ") }, "stderr:\n\(run.stderr)")
            }
        }

        /// Drop-ins apply in lexical order of their names (not creation order), later ones
        /// overriding earlier ones and the main file; files not ending in .conf are ignored.
        @Test func dropInsApplyInLexicalOrder() throws {
            try withTempDir { dir in
                let config = try dir.write("echod.conf", Echod.config(workers: 2, stopTimeoutSec: 5))
                try dir.write("echod.conf.d/20-b.conf", "[Server]\nWorkers=5\n")
                try dir.write("echod.conf.d/10-a.conf", "[Server]\nWorkers=3\nStopTimeoutSec=9\n")
                try dir.write("echod.conf.d/30-c.conf.disabled", "[Server]\nWorkers=7\n")
                let run = try Echod.run(["--config", config, "--check-config"], in: dir)
                #expect(run.status == .exited(0), "stderr: \(run.stderr)")
                let settings = effectiveSettings(run.stdout)
                #expect(settings["Workers"] == ["5"], "--check-config output:\n\(run.stdout)")
                #expect(isSeconds(settings["StopTimeoutSec"], 9), "--check-config output:\n\(run.stdout)")
            }
        }

        /// Without --check-config a bad file still means exit 78 before anything starts:
        /// no listener bound and no READY=1.
        @Test func startingWithBadConfigStartsNothing() throws {
            try withTempDir { dir in
                let config = try dir.write("echod.conf", "[Server]\nModel=event\nListen=127.0.0.1:0\nWorkers=-3\n")
                let notify = try NotifyListener(path: dir.file("notify.sock"))
                let run = try Echod.run(["--config", config], in: dir, environment: ["NOTIFY_SOCKET": notify.path])
                #expect(run.status == .exited(Echod.configErrorStatus), "stderr: \(run.stderr)")
                #expect(run.stderr.split(separator: "\n").contains { $0.contains("\(config):4: ") }, "stderr:\n\(run.stderr)")
                #expect(!run.stderr.contains("listen.address="), "a listener was bound:\n\(run.stderr)")
                let datagrams = try notify.drain()
                #expect(!datagrams.contains { notifyLines($0).contains("READY=1") }, "notify: \(datagrams)")
            }
        }
    }
}
