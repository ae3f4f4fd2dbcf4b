// SPDX-License-Identifier: Apache-2.0

import Foundation
import Glibc
import Testing

extension EchodIntegration {
    /// The STATUS= figures as a Prometheus text file in `$RUNTIME_DIRECTORY` (issue 14 item 5).
    @Suite struct MetricsFile {
        /// The file follows the open and accepted counts of every model, is rewritten with the
        /// STATUS= lines, and goes away when echod stops.
        @Test(arguments: servingModels)
        func followsTheFiguresAndGoesAwayAtStop(model: String) throws {
            try withTempDir { runtime in
                let path = runtime.file("echod.prom")
                try withEchod(config: Echod.config(model: model), environment: ["RUNTIME_DIRECTORY": runtime.path]) { server in
                    let clients = try (0..<3).map { _ in try Client(port: server.port) }
                    for c in clients {
                        try c.writeAll(Array("ping".utf8))
                        #expect(try c.readExactly(4) == Array("ping".utf8))
                    }
                    var text = ""
                    let seen = waitUntil(timeout: .seconds(10)) {
                        text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
                        return sample("echod_connections_open", in: text) == "3"
                    }
                    #expect(seen, "echod_connections_open never 3; file:\n\(text)\n\(server.describeState())")
                    #expect(sample("echod_connections_accepted_total", in: text) == "3")
                    #expect(text.contains("model=\"\(model)\""), "\(text)")
                    var st = stat()
                    #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o644)
                    for c in clients { c.close() }
                    let closed = waitUntil(timeout: .seconds(10)) {
                        text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
                        return sample("echod_connections_open", in: text) == "0"
                    }
                    #expect(closed, "echod_connections_open never back to 0; file:\n\(text)")
                    server.child.signal(SIGTERM)
                    #expect(server.child.waitExit(timeout: .seconds(10)) == .exited(0), "\(server.describeState())")
                    #expect(access(path, F_OK) != 0, "the metrics file outlived echod")
                }
            }
        }

        /// Without `RUNTIME_DIRECTORY` nothing is written.
        @Test func noRuntimeDirectoryNoFile() throws {
            try withEchod { server in
                try roundTrip(port: server.port)
                #expect(!readText(server.dir.file("echod.stderr")).contains("metrics"))
                let files = try FileManager.default.contentsOfDirectory(atPath: server.dir.path)
                #expect(!files.contains { $0.hasSuffix(".prom") })
            }
        }
    }
}

/// The value of the first sample of `metric` (no labels) in a text-format exposition.
private func sample(_ metric: String, in text: String) -> String? {
    for line in text.split(separator: "\n") where line.hasPrefix(metric + " ") {
        return String(line.dropFirst(metric.count + 1))
    }
    return nil
}
