// SPDX-License-Identifier: Apache-2.0
// Reading configuration files from disk: the main file, its drop-in directory, missing and
// unreadable files, and the shipped etc/echod.conf. Each test works in its own mkdtemp
// directory, removed afterwards.
import EchoCore
import Glibc
import Testing

private typealias Fixture = ConfigFixture
/// `Testing` has a `SourceLocation` too.
private typealias Location = EchoCore.SourceLocation

@Suite struct ConfigLoaderTests {
    // MARK: Drop-ins

    @Test func dropInsAreAppliedInByteOrderAndTheLaterFileWins() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\nWorkers=1\nBacklog=10\nListen=127.0.0.1:1\nListen=127.0.0.1:2\n")
            try Fixture.makeDirectory(main + ".d")
            // Written out of order: the directory order must not matter.
            try Fixture.writeFile(main + ".d/20-b.conf", "[Server]\nWorkers=3\n")
            try Fixture.writeFile(main + ".d/10-a.conf", "[Server]\nWorkers=2\nLogLevel=debug\n")
            try Fixture.writeFile(main + ".d/B-upper.conf", "[Limits]\nNoFile=100\n")
            try Fixture.writeFile(main + ".d/a-lower.conf", "[Limits]\nNoFile=200\n")

            let (config, warnings) = try ConfigurationLoader.load(path: main, explicitlyRequested: true)
            #expect(warnings.isEmpty)
            #expect(config.workers == 3)
            #expect(config.backlog == 10)
            #expect(config.logLevel == .debug)
            // Byte order: "B-upper" < "a-lower", so the lower-case file is applied last.
            #expect(config.noFile == .value(200))
            #expect(config.listen.map(\.description) == ["127.0.0.1:1", "127.0.0.1:2"])
            #expect(
                config.sources == [
                    main, main + ".d/10-a.conf", main + ".d/20-b.conf", main + ".d/B-upper.conf",
                    main + ".d/a-lower.conf",
                ])
            #expect(config.origins["Server.Workers"] == Location(file: main + ".d/20-b.conf", line: 2))
            #expect(config.origins["Server.LogLevel"] == Location(file: main + ".d/10-a.conf", line: 3))
            #expect(config.origins["Server.Backlog"] == Location(file: main, line: 3))
        }
    }

    @Test func emptyListenInADropInReplacesTheMainFilesList() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\nListen=127.0.0.1:1\nListen=127.0.0.1:2\n")
            try Fixture.makeDirectory(main + ".d")
            try Fixture.writeFile(main + ".d/50-listen.conf", "[Server]\nListen=\nListen=[::1]:3\n")

            let (config, _) = try ConfigurationLoader.load(path: main, explicitlyRequested: true)
            #expect(config.listen.map(\.description) == ["[::1]:3"])
            #expect(config.origins["Server.Listen[0]"] == Location(file: main + ".d/50-listen.conf", line: 3))
        }
    }

    @Test func otherFilesInTheDropInDirectoryAreIgnored() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\nWorkers=1\n")
            let dropIns = main + ".d"
            try Fixture.makeDirectory(dropIns)
            try Fixture.writeFile(dropIns + "/10-a.conf", "[Server]\nWorkers=2\n")
            try Fixture.writeFile(dropIns + "/README", "not a config file at all")
            try Fixture.writeFile(dropIns + "/90-z.conf.disabled", "garbage")
            try Fixture.writeFile(dropIns + "/90-z.conf~", "garbage")
            try Fixture.writeFile(dropIns + "/.hidden.conf", "garbage")
            try Fixture.makeDirectory(dropIns + "/30-directory.conf")
            // A symlink to /dev/null masks a drop-in, as in systemd.
            try #require(symlink("/dev/null", dropIns + "/40-masked.conf") == 0)

            let (config, warnings) = try ConfigurationLoader.load(path: main, explicitlyRequested: true)
            #expect(warnings.isEmpty)
            #expect(config.workers == 2)
            #expect(config.sources == [main, dropIns + "/10-a.conf"])
        }
    }

    @Test func sameKeyTwiceInOneDropInIsAnErrorNamingThatFile() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\nWorkers=1\n")
            try Fixture.makeDirectory(main + ".d")
            try Fixture.writeFile(main + ".d/10-a.conf", "[Server]\nWorkers=2\n\nWorkers=3\n")

            #expect(
                Fixture.loadRejection(path: main)
                    == ["\(main).d/10-a.conf:4: duplicate key 'Workers' in [Server] (first set at line 2)"])
        }
    }

    @Test func duplicateListenInMainFileIsFineWhenADropInResetsTheList() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\nListen=127.0.0.1:1\nListen=127.0.0.1:1\n")
            try Fixture.makeDirectory(main + ".d")
            try Fixture.writeFile(main + ".d/10-a.conf", "[Server]\nListen=\nListen=127.0.0.1:1\n")

            let (config, _) = try ConfigurationLoader.load(path: main, explicitlyRequested: true)
            #expect(config.listen.map(\.description) == ["127.0.0.1:1"])
        }
    }

    @Test func duplicateListenAcrossFilesIsReportedInTheDropIn() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\nListen=127.0.0.1:1\n")
            try Fixture.makeDirectory(main + ".d")
            try Fixture.writeFile(main + ".d/10-a.conf", "[Server]\nListen=[::1]:1\nListen=127.0.0.1:1\n")

            #expect(
                Fixture.loadRejection(path: main)
                    == ["\(main).d/10-a.conf:3: duplicate address 127.0.0.1:1 in Listen= (first given at \(main):2)"])
        }
    }

    @Test func modelKeysOfAnotherModelWarnWithTheirLocation() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\nModel=thread\n[Thread]\nMaxThreads=10\n[Fork]\nMaxChildren=5\n")
            let (config, warnings) = try ConfigurationLoader.load(path: main, explicitlyRequested: true)
            #expect(config.model == .thread)
            #expect(config.maxThreads == 10)
            #expect(
                warnings.map(\.description)
                    == ["\(main):6: warning: MaxChildren= in [Fork] applies only to Model=fork; ignored with Model=thread"])

            // A drop-in switching the model moves the warning to the other key.
            try Fixture.makeDirectory(main + ".d")
            try Fixture.writeFile(main + ".d/10-fork.conf", "[Server]\nModel=fork\n")
            let (forked, warnings2) = try ConfigurationLoader.load(path: main, explicitlyRequested: true)
            #expect(forked.model == .fork)
            #expect(
                warnings2.map(\.description)
                    == ["\(main):4: warning: MaxThreads= in [Thread] applies only to Model=thread; ignored with Model=fork"])
        }
    }

    @Test func errorsOfEveryFileAreReportedInFileThenLineOrder() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\n\nWorkers=x\nBacklog=0\n")
            try Fixture.makeDirectory(main + ".d")
            try Fixture.writeFile(main + ".d/20-b.conf", "[Bogus]\n")
            try Fixture.writeFile(main + ".d/10-a.conf", "[Limits]\nNoFile=none\n")

            #expect(
                Fixture.loadRejection(path: main) == [
                    "\(main):3: invalid value 'x' for Workers=: expected a number from 0 to 1024",
                    "\(main):4: invalid value '0' for Backlog=: expected a number from 1 to 1000000",
                    "\(main).d/10-a.conf:2: invalid value 'none' for NoFile=: "
                        + "expected a number from 1 to 4294967295 or 'max'",
                    "\(main).d/20-b.conf:1: unknown section [Bogus]",
                ])
        }
    }

    // MARK: Missing and unreadable files

    @Test func missingDefaultMainFileMeansDefaultsButDropInsAreRead() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            let (empty, _) = try ConfigurationLoader.load(path: main, explicitlyRequested: false)
            #expect(empty == Configuration())

            try Fixture.makeDirectory(main + ".d")
            try Fixture.writeFile(main + ".d/10-a.conf", "[Server]\nWorkers=2\n")
            let (config, _) = try ConfigurationLoader.load(path: main, explicitlyRequested: false)
            #expect(Fixture.settingsOnly(config) == Fixture.defaults { $0.workers = 2 })
            #expect(config.sources == [main + ".d/10-a.conf"])
        }
    }

    @Test func missingExplicitMainFileIsAnError() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            let error = try #require(throws: ConfigurationError.self) {
                try ConfigurationLoader.load(path: main, explicitlyRequested: true)
            }
            #expect(error.description == "\(main): cannot open: No such file or directory")
            #expect(error.diagnostics.first?.location == nil)
        }
    }

    @Test func mainFileThatIsADirectoryIsNotARegularFile() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.makeDirectory(main)
            #expect(
                Fixture.loadRejection(path: main, explicitlyRequested: false)
                    == ["\(main): not a regular file (a directory)"])
        }
    }

    /// Runs as root too (make test does): root reads files whatever their mode, so the load runs
    /// with this thread's filesystem uid set to nobody (setfsuid(2) is per thread and drops
    /// CAP_DAC_OVERRIDE for it), then set back.
    @Test func unreadableFileIsReportedWithStrerror() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\n")
            try #require(chmod(main, 0) == 0)
            try #require(chmod(dir, 0o755) == 0)  // nobody may look for the drop-in directory
            let rejection = try withFilesystemUser(geteuid() == 0 ? 65534 : nil) {
                Fixture.loadRejection(path: main, explicitlyRequested: false)
            }
            #expect(rejection == ["\(main): cannot open: Permission denied"])
        }
    }

    /// Runs `body` with the calling thread's filesystem uid set to `uid` (nil: unchanged).
    private func withFilesystemUser<R>(_ uid: uid_t?, _ body: () -> R) throws -> R {
        guard let uid else { return body() }
        // setfsuid is declared in <sys/fsuid.h>, which Swift's Glibc module does not include.
        typealias SetFsuid = @convention(c) (uid_t) -> Int32
        guard let symbol = dlsym(nil, "setfsuid") else { throw FsuidUnavailable() }
        let setfsuid = unsafeBitCast(symbol, to: SetFsuid.self)
        let previous = uid_t(setfsuid(uid))
        defer { _ = setfsuid(previous) }
        return body()
    }

    private struct FsuidUnavailable: Error {}

    @Test func dropInPathThatIsNotADirectoryIsAnError() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\n")
            try Fixture.writeFile(main + ".d", "oops")
            #expect(Fixture.loadRejection(path: main) == ["\(main).d: cannot open directory: Not a directory"])
        }
    }

    @Test func invalidUTF8IsReportedAtItsLineAndAllowedInComments() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            let bytes: [UInt8] =
                Array("[Server]\n# caf".utf8) + [0xE9] + Array(" in a Latin-1 comment is fine\nWorkers=".utf8) + [
                    0xFF, 0xFE,
                ]
                + Array("\nBacklog=1\n".utf8)
            try Fixture.writeFile(main, bytes: bytes)
            #expect(Fixture.loadRejection(path: main) == ["\(main):3: line is not valid UTF-8"])
        }
    }

    // MARK: The shipped file

    static let shippedConfig = Fixture.repositoryRoot() + "/etc/echod.conf"

    @Test func shippedConfigLoadsToTheDefaults() throws {
        let (config, warnings) = try ConfigurationLoader.load(path: Self.shippedConfig, explicitlyRequested: true)
        #expect(warnings.isEmpty)
        #expect(Fixture.settingsOnly(config) == Configuration())
        #expect(config.origins.isEmpty)
    }

    @Test func shippedConfigDocumentsEveryKeyWithItsDefault() throws {
        // Uncommenting every "#Key=value" line must set every key, each to its default: so no
        // key is missing from the file, and no documented default is wrong.
        let text = try Fixture.readTextFile(Self.shippedConfig)
        let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            let isKeyLine = line.hasPrefix("#") && line.dropFirst().first?.isLetter == true && line.contains("=")
            return isKeyLine ? String(line.dropFirst()) : String(line)
        }.joined(separator: "\n")
        let config = try Fixture.parse(uncommented, file: "uncommented.conf")
        #expect(Fixture.settingsOnly(config) == Configuration())

        let renderedKeys = Configuration().rendered().split(separator: "\n").filter {
            !$0.hasPrefix("#") && $0.contains("=")
        }
        // Keys whose default is empty ("left as inherited") get no origin when set empty.
        // So does ListenDatagram=, a list key whose default is empty: its bare "#ListenDatagram="
        // line, uncommented, empties the list (an origin) and renders as "ListenDatagram=".
        let setKeys = config.origins.keys.filter { !$0.contains("[") && $0 != "Server.ListenDatagram" }
        #expect(setKeys.count == renderedKeys.filter { !$0.hasSuffix("=") }.count)
        for line in renderedKeys {
            #expect(text.contains("\n#\(line)\n"), "etc/echod.conf lacks '#\(line)'")
        }
    }

    @Test func renderedAfterLoadNamesTheFilesRead() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Limits]\nNoFile=4096\n")
            let (config, _) = try ConfigurationLoader.load(path: main, explicitlyRequested: true)
            let rendered = config.rendered()
            #expect(rendered.hasPrefix("# Effective configuration of echod.\n# Read from, in order: \(main)\n"))
            #expect(rendered.contains("[Limits]\n# from \(main):2\nNoFile=4096\n"))
        }
    }
}

/// Files that are not regular (issue 13, defect 2): `--config` naming a FIFO hung in `open(2)`
/// with SIGTERM blocked. Every load here runs on its own thread with a deadline: if it is still
/// blocked after it, the test fails and opens the FIFO for writing, which lets the blocked open
/// return, so that a loader that blocks fails the run instead of hanging it.
@Suite struct ConfigNonRegularFileTests {
    final class Outcome: @unchecked Sendable {
        var rejection: [String] = []
    }

    /// The rejection of loading `path`, or `nil` if the load was still running after 5 seconds
    /// (then the FIFOs in `fifos` are opened for writing once, to release it).
    static func loadRejectionWithDeadline(path: String, fifos: [String]) throws -> [String]? {
        var done: [Int32] = [-1, -1]
        try #require(pipe(&done) == 0)
        defer { close(done[0]) }
        let outcome = Outcome()
        let writeEnd = done[1]
        let thread = try JoinableThread(name: "config-load") {
            outcome.rejection = Fixture.loadRejection(path: path)
            var byte: UInt8 = 1
            _ = write(writeEnd, &byte, 1)
            close(writeEnd)
        }
        var waiting = pollfd(fd: done[0], events: Int16(POLLIN), revents: 0)
        let finished = poll(&waiting, 1, 5_000) == 1
        if !finished {
            for fifo in fifos {
                let fd = open(fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
                if fd >= 0 { close(fd) }
            }
        }
        thread.join()
        return finished ? outcome.rejection : nil
    }

    @Test func mainFileThatIsAFIFOIsAnErrorAndDoesNotBlock() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try #require(mkfifo(main, 0o644) == 0)
            let rejection = try Self.loadRejectionWithDeadline(path: main, fifos: [main])
            #expect(rejection == ["\(main): not a regular file (a FIFO)"], "nil: the load blocked")
        }
    }

    @Test func dropInThatIsAFIFOIsAnErrorAndDoesNotBlock() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try Fixture.writeFile(main, "[Server]\nWorkers=1\n")
            try Fixture.makeDirectory(main + ".d")
            try Fixture.writeFile(main + ".d/10-a.conf", "[Server]\nWorkers=2\n")
            let fifo = main + ".d/50-fifo.conf"
            try #require(mkfifo(fifo, 0o644) == 0)
            let rejection = try Self.loadRejectionWithDeadline(path: main, fifos: [fifo])
            #expect(rejection == ["\(fifo): not a regular file (a FIFO)"], "nil: the load blocked")
        }
    }

    @Test func mainFileThatIsASocketOrDeviceIsAnError() throws {
        try Fixture.withTempDirectory { dir in
            #expect(Fixture.loadRejection(path: "/dev/zero") == ["/dev/zero: not a regular file (a character device)"])

            let socketPath = dir + "/echod.conf"
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            try #require(fd >= 0)
            defer { close(fd) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (i, byte) in socketPath.utf8.enumerated() where i < raw.count - 1 { raw[i] = byte }
            }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            try #require(bound == 0)
            #expect(Fixture.loadRejection(path: socketPath) == ["\(socketPath): not a regular file (a socket)"])
        }
    }

    /// A main file that is (a symlink to) /dev/null reads as empty, as a mask does for drop-ins.
    @Test func mainFileThatIsDevNullReadsAsEmpty() throws {
        try Fixture.withTempDirectory { dir in
            let main = dir + "/echod.conf"
            try #require(symlink("/dev/null", main) == 0)
            let (config, warnings) = try ConfigurationLoader.load(path: main, explicitlyRequested: true)
            #expect(warnings.isEmpty)
            #expect(Fixture.settingsOnly(config) == Configuration())
        }
    }
}
