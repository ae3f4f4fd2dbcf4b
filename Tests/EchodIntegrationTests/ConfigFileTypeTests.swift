// SPDX-License-Identifier: Apache-2.0
// echod given configuration files that are not regular files (issue 13, defect 2): `--config`
// naming a FIFO hung in open(2) with SIGTERM and SIGINT blocked, so only SIGKILL ended it.
// Now it is a configuration error (exit 78) naming the file, at start as in --check-config,
// for the main file and for a drop-in. Echod.run bounds every run (10 s here) and kills a
// child still running after it, so a hang fails the test instead of the run.
import Glibc
import Testing

extension EchodIntegration {
    @Suite struct ConfigFileType {
        @Test(arguments: [["--check-config"], []])
        func mainFileThatIsAFIFOIsAConfigurationError(_ extra: [String]) throws {
            try withTempDir { dir in
                let fifo = dir.file("echod.conf")
                try #require(mkfifo(fifo, 0o644) == 0)
                let run = try Echod.run(["--config", fifo] + extra, in: dir, timeout: .seconds(10))
                #expect(run.status == .exited(Echod.configErrorStatus), "stderr: \(run.stderr)")
                #expect(run.stderr.contains("\(fifo): not a regular file (a FIFO)"), "stderr:\n\(run.stderr)")
            }
        }

        @Test func dropInThatIsAFIFOIsAConfigurationError() throws {
            try withTempDir { dir in
                let config = try dir.write("echod.conf", Echod.config(listen: ["127.0.0.1:0"]))
                _ = try dir.write("echod.conf.d/10-a.conf", "[Server]\nWorkers=1\n")
                let fifo = dir.file("echod.conf.d/50-fifo.conf")
                try #require(mkfifo(fifo, 0o644) == 0)
                let run = try Echod.run(["--config", config, "--check-config"], in: dir, timeout: .seconds(10))
                #expect(run.status == .exited(Echod.configErrorStatus), "stderr: \(run.stderr)")
                #expect(run.stderr.contains("\(fifo): not a regular file (a FIFO)"), "stderr:\n\(run.stderr)")
            }
        }
    }
}
