// SPDX-License-Identifier: Apache-2.0
// Loading the configuration must be linear in the file's size (issue 13, defect 1): a file of
// 8,000 `Listen=` lines took 11 s and 250,000 backslash-continued lines over 5 s, because each
// assignment rendered the whole list and each continuation copied and rescanned the line so far.
//
// The bound is on this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), not wall time, so that a
// loaded machine does not fail it; it is generous (seconds for what takes a fraction of one,
// in a debug build) and still fails by far on a quadratic loader, whose time at 1 MiB is
// minutes. Sizes grow 64 KiB, 256 KiB, 1 MiB and stop at the first failure, so a quadratic
// loader fails in seconds rather than after the minutes the largest file would take.
// `bench/config_shapes.py` (`make bench-config`) prints the figures.
import EchoCore
import Glibc
import Testing

private typealias Fixture = ConfigFixture

@Suite struct ConfigScalingTests {
    /// A file shape: the text of about `size` bytes.
    struct Shape: CustomTestStringConvertible, Sendable {
        let name: String
        let make: @Sendable (Int) -> String
        var testDescription: String { name }
    }

    /// Lines made by `line(n)` for n = 0, 1, … under the heading, up to `size` bytes.
    static func repeated(_ heading: String, size: Int, _ line: (Int) -> String) -> String {
        var text = heading
        var n = 0
        while true {
            let next = line(n)
            guard text.utf8.count + next.utf8.count <= size else { return text }
            text += next
            n += 1
        }
    }

    /// Distinct addresses: every line appends to the list and none is a duplicate.
    static func listenLine(_ n: Int) -> String {
        "Listen=127.\((n >> 16) & 255).\((n >> 8) & 255).\(n & 255):\(1024 + n % 60000)\n"
    }

    static let shapes: [Shape] = [
        Shape(name: "Listen= lines") { size in repeated("[Server]\n", size: size, listenLine) },
        Shape(name: "one line continued with backslashes") { size in
            "[Server]\nWorkers=1 \\\n" + String(repeating: "\\\n", count: (size - 24) / 2) + "2\n"
        },
        Shape(name: "continued lines with comments between") { size in
            "[Server]\nWorkers=1 \\\n" + String(repeating: "# c\n\\\n", count: (size - 24) / 6) + "2\n"
        },
        Shape(name: "the same Listen= address over and over") { size in
            repeated("[Server]\n", size: size) { _ in "Listen=127.0.0.1:7007\n" }
        },
        Shape(name: "Listen= lists emptied and refilled") { size in
            repeated("[Server]\n", size: size) { n in n % 101 == 100 ? "Listen=\n" : listenLine(n % 101) }
        },
        Shape(name: "a different unknown key on every line") { size in
            repeated("[Server]\n", size: size) { n in "W\(1_000_000 + n)=1\n" }
        },
        Shape(name: "one key name as long as the file") { size in
            "[Server]\n" + String(repeating: "K", count: size - 20) + "=1\n"
        },
        Shape(name: "one key set over and over") { size in
            repeated("[Server]\n", size: size) { _ in "Workers=1\n" }
        },
    ]

    /// CPU seconds this thread has used.
    static func threadCPUSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// Loads `text` from a file in `dir` and returns the CPU seconds it took (the result, accepted
    /// or rejected, does not matter here).
    static func loadSeconds(_ text: String, in dir: String) throws -> Double {
        let path = dir + "/echod.conf"
        try Fixture.writeFile(path, text)
        let start = threadCPUSeconds()
        _ = try? ConfigurationLoader.load(path: path, explicitlyRequested: true)
        return threadCPUSeconds() - start
    }

    /// One second plus nine per MiB: ten times what a debug build needs for 1 MiB.
    static func bound(bytes: Int) -> Double {
        1 + 9 * Double(bytes) / Double(1 << 20)
    }

    @Test(arguments: shapes)
    func loadingIsLinearInTheFileSize(_ shape: Shape) throws {
        try Fixture.withTempDirectory { dir in
            for size in [64 << 10, 256 << 10, 1 << 20] {
                let text = shape.make(size)
                #expect(text.utf8.count <= 1 << 20 && text.utf8.count > size - 64)
                let seconds = try Self.loadSeconds(text, in: dir)
                let limit = Self.bound(bytes: text.utf8.count)
                #expect(seconds < limit, "\(text.utf8.count) bytes took \(seconds) s of CPU (bound \(limit) s)")
                if seconds >= limit { return }
            }
        }
    }

    /// The two files of the report, as they were: 8,000 `Listen=` lines (11 s before) and
    /// 250,000 backslash-continued lines (over 5 s). Each is first loaded at a tenth of its
    /// size, and the full file only if that was fast: a quadratic loader takes hours of debug
    /// build CPU on the full continued file.
    @Test func theReportedFilesLoadInAFractionOfTheirFormerTime() throws {
        let shapes: [(name: String, make: (Int) -> String)] = [
            ("Listen= lines", { n in "[Server]\n" + (0..<n).map(Self.listenLine).joined() }),
            ("continued lines", { n in "[Server]\nWorkers=1 \\\n" + String(repeating: "\\\n", count: n) + "2\n" }),
        ]
        try Fixture.withTempDirectory { dir in
            for (shape, full) in zip(shapes, [8000, 250_000]) {
                for (lines, limit) in [(full / 10, 0.5), (full, 2.0)] {
                    let seconds = try Self.loadSeconds(shape.make(lines), in: dir)
                    #expect(seconds < limit, "\(lines) \(shape.name) took \(seconds) s of CPU (bound \(limit) s)")
                    if seconds >= limit { break }
                }
            }
        }
    }

    /// What the faster paths must still get right: the origin of every `Listen=` element after
    /// the list was emptied and refilled, and a hint for an unknown key.
    @Test func listOriginsAndHintsSurviveTheFasterPaths() throws {
        let config = try Fixture.parse(
            "[Server]\nListen=127.0.0.1:1\nListen=127.0.0.1:2\nListen=\nListen=127.0.0.1:3\n")
        #expect(config.listen.map(\.description) == ["127.0.0.1:3"])
        #expect(config.origins["Server.Listen[0]"] == EchoCore.SourceLocation(file: "test.conf", line: 5))
        #expect(config.origins["Server.Listen[1]"] == nil)
        #expect(
            Fixture.rejection(of: "[Server]\nWorker=1\n")
                == ["test.conf:2: unknown key 'Worker' in [Server] (did you mean 'Workers'?)"])
    }

    /// A file of many mistakes is reported in a screenful: the first 100 in line order, then one
    /// line counting the rest (and the configuration is still rejected).
    @Test func diagnosticsPastTheHundredthAreCountedNotListed() {
        let text = "[Server]\n" + String(repeating: "Workers=1\n", count: 151) + "[Thread]\nMaxThreads=1\n"
        let diagnostics = Fixture.rejection(of: text)
        #expect(diagnostics.count == 101)
        #expect(diagnostics.first == "test.conf:3: duplicate key 'Workers' in [Server] (first set at line 2)")
        #expect(diagnostics[99] == "test.conf:102: duplicate key 'Workers' in [Server] (first set at line 2)")
        #expect(diagnostics.last == "51 more diagnostics not shown (errors: 50, warnings: 1)")
    }
}
