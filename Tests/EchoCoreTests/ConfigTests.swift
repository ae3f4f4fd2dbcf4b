// SPDX-License-Identifier: Apache-2.0

import Logging
import Testing

// Parsing and validation of the configuration file, through `ConfigurationLoader.apply`, which
// treats a string as one file. Reading real files and drop-in directories is in
// ConfigLoaderTests.swift.
@testable import EchoCore

private typealias Fixture = ConfigFixture
/// `Testing` has a `SourceLocation` too.
private typealias Location = EchoCore.SourceLocation

/// A valid assignment and the settings it must produce.
struct ValidValueCase: Sendable, CustomTestStringConvertible {
    let text: String
    let change: @Sendable (inout Configuration) -> Void
    var testDescription: String { text.replacingNewlines() }

    init(_ section: String, _ assignment: String, _ change: @escaping @Sendable (inout Configuration) -> Void) {
        text = "[\(section)]\n\(assignment)\n"
        self.change = change
    }
}

/// An invalid value and what the error must say after "invalid value 'x' for Key=: ".
struct InvalidValueCase: Sendable, CustomTestStringConvertible {
    let section: String
    let key: String
    let value: String
    let reason: String
    var testDescription: String { "\(key)=\(value)" }

    init(_ section: String, _ key: String, _ value: String, _ reason: String) {
        self.section = section
        self.key = key
        self.value = value
        self.reason = reason
    }
}

extension String {
    fileprivate func replacingNewlines() -> String {
        split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "⏎")
    }
}

private let numberTo1024 = "expected a number from 0 to 1024"
private let connectionsReason = "expected a number from 1 to 10000000 or 'auto'"
private let backlogReason = "expected a number from 1 to 1000000"
private let timeReason = "expected a time span greater than 0 and at most 1h, e.g. '10', '2.5s', '500ms', '1min'"
private let levelReason = "expected one of: trace, debug, info, notice, warning, error, critical"
private let noFileReason = "expected a number from 1 to 4294967295 or 'max'"

@Suite struct ConfigTests {
    // MARK: Defaults

    @Test func defaultsAreTheDocumentedOnes() {
        let config = Configuration()
        #expect(config.model == .event)
        #expect(config.listen.map(\.description) == ["127.0.0.1:7007"])
        #expect(config.workers == 0)
        #expect(config.maxConnections == .auto)
        #expect(config.backlog == 4096)
        #expect(config.stopTimeout == .seconds(10))
        #expect(config.logLevel == .info)
        #expect(config.noFile == .max)
        #expect(config.origins.isEmpty)
        #expect(config.sources.isEmpty)
    }

    @Test func emptyTextGivesDefaultsAndRecordsTheSource() throws {
        let (config, warnings) = try ConfigurationLoader.apply(text: "", file: "empty.conf", to: Configuration())
        #expect(Fixture.settingsOnly(config) == Configuration())
        #expect(config.origins.isEmpty)
        #expect(config.sources == ["empty.conf"])
        #expect(warnings.isEmpty)
    }

    // MARK: Values

    static let validValues: [ValidValueCase] = [
        .init("Server", "Model=event") { $0.model = .event },
        .init("Server", "Listen=127.0.0.1:7007") { $0.listen = [try! SocketAddress(parsing: "127.0.0.1:7007")] },
        .init("Server", "Listen=[::1]:7007") { $0.listen = [try! SocketAddress(parsing: "[::1]:7007")] },
        .init("Server", "Listen=0.0.0.0:7") { $0.listen = [try! SocketAddress(parsing: "0.0.0.0:7")] },
        .init("Server", "Listen=[::]:0") { $0.listen = [try! SocketAddress(parsing: "[::]:0")] },
        .init("Server", "ListenDatagram=127.0.0.1:7") { $0.listenDatagram = [try! SocketAddress(parsing: "127.0.0.1:7")] },
        .init("Server", "ListenDatagram=[::1]:0") { $0.listenDatagram = [try! SocketAddress(parsing: "[::1]:0")] },
        .init("UDP", "MaxBytesPerSecond=1K") { $0.udpMaxBytesPerSecond = 1024 },
        .init("UDP", "MaxBytesPerSecond=100M") { $0.udpMaxBytesPerSecond = 100 << 20 },
        .init("UDP", "MaxBytesPerSecond=infinity") { $0.udpMaxBytesPerSecond = nil },
        .init("UDP", "RatePerSource=50") { $0.udpRatePerSource = 50_000 },
        .init("UDP", "RatePerSource=infinity") { $0.udpRatePerSource = nil },
        .init("UDP", "BurstPerSource=10") { $0.udpBurstPerSource = 10 },
        .init("Server", "Workers=0") { $0.workers = 0 },
        .init("Server", "Workers=8") { $0.workers = 8 },
        .init("Server", "Workers=1024") { $0.workers = 1024 },
        .init("Server", "Workers=007") { $0.workers = 7 },
        .init("Server", "MaxConnections=auto") { $0.maxConnections = .auto },
        .init("Server", "MaxConnections=1") { $0.maxConnections = .limit(1) },
        .init("Server", "MaxConnections=10000000") { $0.maxConnections = .limit(10_000_000) },
        .init("Server", "Backlog=1") { $0.backlog = 1 },
        .init("Server", "Backlog=1000000") { $0.backlog = 1_000_000 },
        .init("Server", "StopTimeoutSec=10") { $0.stopTimeout = .seconds(10) },
        .init("Server", "StopTimeoutSec=2.5s") { $0.stopTimeout = .milliseconds(2500) },
        .init("Server", "StopTimeoutSec=0.5") { $0.stopTimeout = .milliseconds(500) },
        .init("Server", "StopTimeoutSec=500ms") { $0.stopTimeout = .milliseconds(500) },
        .init("Server", "StopTimeoutSec=1min") { $0.stopTimeout = .seconds(60) },
        .init("Server", "StopTimeoutSec=1min 30s") { $0.stopTimeout = .seconds(90) },
        .init("Server", "StopTimeoutSec=1min30s") { $0.stopTimeout = .seconds(90) },
        .init("Server", "StopTimeoutSec=2 s") { $0.stopTimeout = .seconds(2) },
        .init("Server", "StopTimeoutSec=3sec") { $0.stopTimeout = .seconds(3) },
        .init("Server", "StopTimeoutSec=1us") { $0.stopTimeout = .microseconds(1) },
        .init("Server", "StopTimeoutSec=3600") { $0.stopTimeout = .seconds(3600) },
        .init("Server", "StopTimeoutSec=1h") { $0.stopTimeout = .seconds(3600) },
        .init("Server", "LogLevel=trace") { $0.logLevel = .trace },
        .init("Server", "LogLevel=debug") { $0.logLevel = .debug },
        .init("Server", "LogLevel=info") { $0.logLevel = .info },
        .init("Server", "LogLevel=notice") { $0.logLevel = .notice },
        .init("Server", "LogLevel=warning") { $0.logLevel = .warning },
        .init("Server", "LogLevel=error") { $0.logLevel = .error },
        .init("Server", "LogLevel=critical") { $0.logLevel = .critical },
        .init("Limits", "NoFile=max") { $0.noFile = .max },
        .init("Limits", "NoFile=1") { $0.noFile = .value(1) },
        .init("Limits", "NoFile=65536") { $0.noFile = .value(65536) },
        .init("Limits", "NoFile=4294967295") { $0.noFile = .value(4_294_967_295) },
    ]

    @Test(arguments: validValues)
    func validValueIsStored(_ testCase: ValidValueCase) throws {
        let config = try Fixture.parse(testCase.text)
        #expect(Fixture.settingsOnly(config) == Fixture.defaults(testCase.change))
    }

    static let invalidValues: [InvalidValueCase] = [
        .init("Server", "Model", "Event", "expected one of: event, thread, fork"),
        .init("Server", "Model", "epoll", "expected one of: event, thread, fork"),
        .init("Server", "Listen", "localhost:7007", "'localhost' is not an IPv4 address"),
        .init("Server", "ListenDatagram", "127.0.0.1", "expected HOST:PORT"),
        .init("UDP", "MaxBytesPerSecond", "1000", "expected a size from 1K to 1T per second, e.g. '16M', or 'infinity'"),
        .init("UDP", "MaxBytesPerSecond", "0", "expected a size from 1K to 1T per second, e.g. '16M', or 'infinity'"),
        .init("UDP", "RatePerSource", "fast", "expected datagrams per second from 0.001 to 1000000, e.g. '100', '0.5/s', '30/min', or 'infinity' (or 0) for none"),
        .init("Server", "Listen", "127.0.0.1", "expected HOST:PORT"),
        .init("Server", "Listen", "127.0.0.1:70000", "port must be a number from 0 to 65535"),
        .init("Server", "Listen", "::1:7007", "IPv6 addresses must be written in brackets, e.g. [::1]:7007"),
        .init(
            "Server", "Listen", "127.0.0.1:7007 127.0.0.1:7008",
            "IPv6 addresses must be written in brackets, e.g. [::1]:7007"),
        .init("Server", "Workers", "abc", numberTo1024),
        .init("Server", "Workers", "-1", numberTo1024),
        .init("Server", "Workers", "+1", numberTo1024),
        .init("Server", "Workers", "1025", numberTo1024),
        .init("Server", "Workers", "1 2", numberTo1024),
        .init("Server", "Workers", "8k", numberTo1024),
        .init("Server", "Workers", "0x10", numberTo1024),
        .init("Server", "Workers", "99999999999999999999999", numberTo1024),
        .init("Server", "MaxConnections", "0", connectionsReason),
        .init("Server", "MaxConnections", "10000001", connectionsReason),
        .init("Server", "MaxConnections", "Auto", connectionsReason),
        .init("Server", "Backlog", "0", backlogReason),
        .init("Server", "Backlog", "1000001", backlogReason),
        .init("Server", "Backlog", "4_096", backlogReason),
        .init("Server", "StopTimeoutSec", "0", timeReason),
        .init("Server", "StopTimeoutSec", "0s", timeReason),
        .init("Server", "StopTimeoutSec", "3601", timeReason),
        .init("Server", "StopTimeoutSec", "61min", timeReason),
        .init("Server", "StopTimeoutSec", "5x", timeReason),
        .init("Server", "StopTimeoutSec", "s", timeReason),
        .init("Server", "StopTimeoutSec", "1.5.2", timeReason),
        .init("Server", "StopTimeoutSec", "-1", timeReason),
        .init("Server", "StopTimeoutSec", "infinity", timeReason),
        .init("Server", "LogLevel", "warn", levelReason),
        .init("Server", "LogLevel", "INFO", levelReason),
        .init("Limits", "NoFile", "0", noFileReason),
        .init("Limits", "NoFile", "4294967296", noFileReason),
        .init("Limits", "NoFile", "Max", noFileReason),
        .init("Limits", "NoFile", "infinity", noFileReason),
    ]

    @Test(arguments: invalidValues)
    func invalidValueIsReportedWithKeyAndValue(_ testCase: InvalidValueCase) {
        let text = "[\(testCase.section)]\n\(testCase.key)=\(testCase.value)\n"
        #expect(
            Fixture.rejection(of: text)
                == ["test.conf:2: invalid value '\(testCase.value)' for \(testCase.key)=: \(testCase.reason)"])
    }

    @Test func invalidValueKeepsTheEarlierFilesValue() throws {
        let base = try Fixture.parse("[Server]\nWorkers=4\n", file: "a.conf")
        #expect(Fixture.rejection(of: "[Server]\nWorkers=x\nBacklog=1\n", on: base).count == 1)
        // The error is what the caller gets; the surviving value matters for a future reload
        // that keeps the old configuration, so pin it through the internal layering call.
        var config = base
        var log = ConfigurationDiagnosticLog()
        ConfigurationParser.apply(
            Array("[Server]\nWorkers=x\nBacklog=1\n".utf8), file: "b.conf", to: &config, log: &log)
        #expect(config.workers == 4)
        #expect(config.backlog == 1)
    }

    @Test func emptyValueRestoresTheDefaultOfASingleValuedKey() throws {
        let base = try Fixture.parse("[Server]\nWorkers=4\nLogLevel=debug\n", file: "a.conf")
        let config = try Fixture.parse("[Server]\nWorkers=\n", file: "b.conf", on: base)
        #expect(config.workers == 0)
        #expect(config.origins["Server.Workers"] == nil)
        #expect(config.logLevel == .debug)
    }

    @Test(arguments: ConcurrencyModel.allCases)
    func everyModelIsAccepted(_ model: ConcurrencyModel) throws {
        let config = try Fixture.parse("[Server]\nModel=\(model.rawValue)\n")
        #expect(config.model == model)
    }

    @Test(arguments: [
        ("[Thread]\nStackSize=32K\n", "Thread.StackSize"),
        ("[Thread]\nMaxThreads=3\n", "Thread.MaxThreads"),
        ("[Fork]\nMaxChildren=3\n", "Fork.MaxChildren"),
    ])
    func modelSpecificKeyWarnsUnderTheEventModel(_ text: String, _ id: String) throws {
        let (config, warnings) = try ConfigurationLoader.apply(text: text, file: "w.conf", to: Configuration())
        #expect(config.origins[id] != nil)
        #expect(warnings.count == 1)
        #expect(warnings.first?.severity == .warning)
        #expect(warnings.first?.description.hasPrefix("w.conf:2: warning: ") == true)
        #expect(warnings.first?.description.hasSuffix("ignored with Model=event") == true)
    }

    @Test func sizesAndLimitsParse() throws {
        let config = try Fixture.parse(
            "[Thread]\nStackSize=1M\n[Limits]\nNProc=500\nCore=0\nStackSize=max\n[Server]\nModel=thread\n")
        #expect(config.threadStackSize == 1 << 20)
        #expect(config.nProc == .value(500))
        #expect(config.core == .value(0))
        #expect(config.stackSize == .max)
        #expect(Configuration().nProc == nil, "NProc= is left alone unless set")
    }

    @Test(arguments: [
        ("[Thread]\nStackSize=8K\n", "expected a size from 16K to 64M"),
        ("[Thread]\nStackSize=1Q\n", "expected a size from 16K to 64M"),
        ("[Limits]\nStackSize=4K\n", "expected a size of at least 128K"),
        ("[Limits]\nNProc=lots\n", "expected a number of at least 1 or 'max'"),
        ("[Fork]\nMaxChildren=0\n", "expected a number from 1 to 1000000"),
    ])
    func badModelAndLimitValuesAreRejected(_ text: String, _ reason: String) {
        let diagnostics = Fixture.rejection(of: text)
        #expect(diagnostics.count == 1)
        #expect(diagnostics.first?.contains(reason) == true, "\(diagnostics)")
        #expect(diagnostics.first?.hasPrefix("test.conf:2: invalid value") == true)
    }

    // MARK: Syntax

    @Test func commentsAreIgnored() throws {
        let text = """
            # Workers=5
            ; Workers=6
            [Server]
              # indented comment with = sign
            \t; tab-indented comment
            #Backlog=7
            Workers=8
            ;LogLevel=trace
            """
        let config = try Fixture.parse(text)
        #expect(Fixture.settingsOnly(config) == Fixture.defaults { $0.workers = 8 })
        #expect(config.origins == ["Server.Workers": Location(file: "test.conf", line: 7)])
    }

    @Test func aHashAfterAValueIsPartOfTheValue() {
        // systemd has no end-of-line comments; the value is "8 # eight".
        #expect(
            Fixture.rejection(of: "[Server]\nWorkers=8 # eight\n")
                == ["test.conf:2: invalid value '8 # eight' for Workers=: \(numberTo1024)"])
    }

    @Test func whitespaceAroundKeysAndValuesIsTrimmed() throws {
        let text =
            "\u{FEFF}  [Server]  \r\n\n   \t\n  Workers  =  8  \r\n\tLogLevel\t=\tdebug\t\r\n Listen = [::1]:7 \n"
        let config = try Fixture.parse(text)
        #expect(
            Fixture.settingsOnly(config)
                == Fixture.defaults {
                    $0.workers = 8
                    $0.logLevel = .debug
                    $0.listen = [try! SocketAddress(parsing: "[::1]:7")]
                })
        #expect(config.origins["Server.LogLevel"]?.line == 5)
    }

    @Test func keysAndSectionsAreCaseSensitive() {
        #expect(
            Fixture.rejection(of: "[server]\n[Server]\nworkers=1\n")
                == [
                    "test.conf:1: unknown section [server] (did you mean [Server]?)",
                    "test.conf:3: unknown key 'workers' in [Server] (did you mean 'Workers'?)",
                ])
    }

    @Test func backslashContinuesALineWithASpace() throws {
        // "1min\" + "30s" is "1min 30s" only if the backslash becomes a space.
        let config = try Fixture.parse("[Server]\nStopTimeoutSec=1min\\\n30s\nWorkers=2\n")
        #expect(config.stopTimeout == .seconds(90))
        #expect(config.origins["Server.StopTimeoutSec"] == Location(file: "test.conf", line: 2))
        #expect(config.origins["Server.Workers"]?.line == 4)
    }

    @Test func commentLinesInsideAContinuationAreSkipped() throws {
        let config = try Fixture.parse("[Server]\nStopTimeoutSec=1min\\\n# not part of it\n  ; nor this\n30s\n")
        #expect(config.stopTimeout == .seconds(90))
    }

    @Test func continuationJoinsKeyTextWithASpace() {
        #expect(
            Fixture.rejection(of: "[Server]\nWork\\\ners=1\n")
                == ["test.conf:2: unknown key 'Work ers' in [Server] (did you mean 'Workers'?)"])
    }

    @Test func escapedBackslashAtEndDoesNotContinue() {
        #expect(
            Fixture.rejection(of: "[Server]\nWorkers=8\\\\\nBacklog=9\n")
                == ["test.conf:2: invalid value '8\\\\' for Workers=: \(numberTo1024)"])
    }

    @Test func continuationAtEndOfFileEndsTheLine() throws {
        let config = try Fixture.parse("[Server]\nWorkers=8\\")
        #expect(config.workers == 8)
    }

    @Test func repeatedSectionHeaderIsFine() throws {
        let config = try Fixture.parse("[Server]\nWorkers=1\n[Limits]\nNoFile=5\n[Server]\nBacklog=5\n")
        #expect(
            Fixture.settingsOnly(config)
                == Fixture.defaults {
                    $0.workers = 1
                    $0.noFile = .value(5)
                    $0.backlog = 5
                })
    }

    // MARK: Lists

    @Test func listenAccumulatesAndReplacesTheDefault() throws {
        let config = try Fixture.parse("[Server]\nListen=127.0.0.1:1\nListen=[::1]:2\n")
        #expect(config.listen.map(\.description) == ["127.0.0.1:1", "[::1]:2"])
    }

    @Test func emptyListenResetsTheList() throws {
        let config = try Fixture.parse("[Server]\nListen=127.0.0.1:1\nListen=\nListen=[::1]:2\n")
        #expect(config.listen.map(\.description) == ["[::1]:2"])
        #expect(config.origins["Server.Listen[0]"]?.line == 4)
        #expect(config.origins["Server.Listen[1]"] == nil)
    }

    @Test func emptyListenAloneLeavesNoAddress() throws {
        let config = try Fixture.parse("[Server]\nListen=\n")
        #expect(config.listen.isEmpty)
        #expect(config.origins["Server.Listen"]?.line == 2)
    }

    @Test func listenInALaterFileAddsToTheEarlierList() throws {
        let base = try Fixture.parse("[Server]\nListen=127.0.0.1:1\n", file: "a.conf")
        let config = try Fixture.parse("[Server]\nListen=127.0.0.1:2\n", file: "b.conf", on: base)
        #expect(config.listen.map(\.description) == ["127.0.0.1:1", "127.0.0.1:2"])
        #expect(config.origins["Server.Listen[0]"] == Location(file: "a.conf", line: 2))
        #expect(config.origins["Server.Listen[1]"] == Location(file: "b.conf", line: 2))
    }

    @Test func duplicateListenAddressIsReportedAtTheSecond() {
        #expect(
            Fixture.rejection(of: "[Server]\nListen=127.0.0.1:1\nListen=[::1]:1\nListen=127.0.0.1:1\n")
                == ["test.conf:4: duplicate address 127.0.0.1:1 in Listen= (first given at line 2)"])
    }

    @Test func duplicateListenAddressAcrossFilesNamesTheFirstFile() throws {
        let base = try Fixture.parse("[Server]\nListen=127.0.0.1:1\n", file: "a.conf")
        #expect(
            Fixture.rejection(of: "[Server]\nListen=127.0.0.1:1\n", file: "b.conf", on: base)
                == ["b.conf:2: duplicate address 127.0.0.1:1 in Listen= (first given at a.conf:2)"])
    }

    // MARK: Duplicates and layering

    @Test func sameKeyTwiceInOneFileIsAnError() {
        #expect(
            Fixture.rejection(of: "[Server]\nModel=event\nWorkers=2\nWorkers=3\n")
                == ["test.conf:4: duplicate key 'Workers' in [Server] (first set at line 3)"])
    }

    @Test func sameKeyTwiceUnderRepeatedHeadersIsAnError() {
        #expect(
            Fixture.rejection(of: "[Limits]\nNoFile=5\n[Server]\n[Limits]\nNoFile=\n")
                == ["test.conf:5: duplicate key 'NoFile' in [Limits] (first set at line 2)"])
    }

    @Test func sameKeyInALaterFileOverrides() throws {
        let base = try Fixture.parse("[Server]\nWorkers=1\nBacklog=5\n", file: "a.conf")
        let config = try Fixture.parse("[Server]\nWorkers=2\n", file: "b.conf", on: base)
        #expect(config.workers == 2)
        #expect(config.backlog == 5)
        #expect(config.origins["Server.Workers"] == Location(file: "b.conf", line: 2))
        #expect(config.origins["Server.Backlog"] == Location(file: "a.conf", line: 3))
        #expect(config.sources == ["a.conf", "b.conf"])
    }

    // MARK: Errors

    static let syntaxErrors: [(text: String, expected: String)] = [
        ("Workers=1", "test.conf:1: assignment outside of any section"),
        ("[Frobnicate]\nBar=1\nBaz=2", "test.conf:1: unknown section [Frobnicate]"),
        ("[Sever]\nWorkers=1", "test.conf:1: unknown section [Sever] (did you mean [Server]?)"),
        ("[Server]\nModle=event", "test.conf:2: unknown key 'Modle' in [Server] (did you mean 'Model'?)"),
        ("[Server]\nFrobnicate=1", "test.conf:2: unknown key 'Frobnicate' in [Server]"),
        ("[Server]\nNoFile=max", "test.conf:2: unknown key 'NoFile' in [Server] (NoFile= belongs in [Limits])"),
        ("[Server]\nfoo bar", "test.conf:2: expected [Section] or Key=Value, got 'foo bar'"),
        ("[Server]\n =5", "test.conf:2: expected [Section] or Key=Value, got '=5'"),
        ("[Server\nWorkers=abc", "test.conf:1: missing ']' in section header"),
        ("[Server] x\nWorkers=abc", "test.conf:1: unexpected text after ']' in section header"),
        ("[Server]\nWorkers=abc", "test.conf:2: invalid value 'abc' for Workers=: \(numberTo1024)"),
        ("[Server]\nWorkers=1\nWorkers=1", "test.conf:3: duplicate key 'Workers' in [Server] (first set at line 2)"),
    ]

    @Test(arguments: syntaxErrors)
    func errorIsReportedWithFileAndLine(_ text: String, _ expected: String) {
        #expect(Fixture.rejection(of: text) == [expected])
    }

    @Test func everyErrorIsReportedInLineOrder() throws {
        let text = """
            Workers=1
            [Server]
            Workers=x
            Modle=event
            Model=threads
            Workers=2
            garbage
            [Nope]
            Anything=1
            [Limits]
            NoFile=0
            """
        let error = try #require(throws: ConfigurationError.self) {
            try ConfigurationLoader.apply(text: text, file: "many.conf", to: Configuration())
        }
        let expected = [
            "many.conf:1: assignment outside of any section",
            "many.conf:3: invalid value 'x' for Workers=: \(numberTo1024)",
            "many.conf:4: unknown key 'Modle' in [Server] (did you mean 'Model'?)",
            "many.conf:5: invalid value 'threads' for Model=: expected one of: event, thread, fork",
            "many.conf:6: duplicate key 'Workers' in [Server] (first set at line 3)",
            "many.conf:7: expected [Section] or Key=Value, got 'garbage'",
            "many.conf:8: unknown section [Nope]",
            "many.conf:11: invalid value '0' for NoFile=: \(noFileReason)",
        ]
        #expect(error.diagnostics.map(\.description) == expected)
        #expect(error.description == expected.joined(separator: "\n"))
        #expect(error.diagnostics.allSatisfy { $0.severity == .error })
        #expect(error.diagnostics[1].location == Location(file: "many.conf", line: 3))
        #expect(error.diagnostics[1].message == "invalid value 'x' for Workers=: \(numberTo1024)")
    }

    @Test func diagnosticDescriptionFormats() {
        let location = Location(file: "/etc/echod/echod.conf", line: 12)
        #expect(location.description == "/etc/echod/echod.conf:12")
        #expect(
            ConfigurationDiagnostic(severity: .error, location: location, message: "m").description
                == "/etc/echod/echod.conf:12: m")
        #expect(
            ConfigurationDiagnostic(severity: .warning, location: location, message: "m").description
                == "/etc/echod/echod.conf:12: warning: m")
        #expect(
            ConfigurationDiagnostic(severity: .error, location: nil, message: "x: cannot open: y").description
                == "x: cannot open: y")
    }

    // MARK: Origins and rendering

    @Test func originsRecordWhereEachValueCameFrom() throws {
        let text = "[Server]\nWorkers=3\n\nListen=127.0.0.1:1\nListen=127.0.0.1:2\n[Limits]\nNoFile=100\n"
        let config = try Fixture.parse(text, file: "o.conf")
        func at(_ line: Int) -> Location { Location(file: "o.conf", line: line) }
        #expect(
            config.origins == [
                "Server.Workers": at(2),
                "Server.Listen": at(5),
                "Server.Listen[0]": at(4),
                "Server.Listen[1]": at(5),
                "Limits.NoFile": at(7),
            ])
    }

    @Test func renderedDefaults() {
        let expected = """
            # Effective configuration of echod.
            # No configuration file was read: built-in defaults.

            [Server]
            # default
            Model=event
            # default
            Listen=127.0.0.1:7007
            # default
            ListenDatagram=
            # default
            Workers=0
            # default
            Processes=1
            # default
            MaxConnections=auto
            # default
            Backlog=4096
            # default
            StopTimeoutSec=10s
            # default
            IdleTimeoutSec=infinity
            # default
            SendTimeoutSec=5min
            # default
            MaxConnectionsPerSource=infinity
            # default
            MaxConnectionRatePerSource=infinity
            # default
            MaxConnectionBurstPerSource=auto
            # default
            SourcePrefixIPv6=64
            # default
            LogLevel=info

            [Limits]
            # default
            NoFile=max
            # default
            NProc=
            # default
            Core=
            # default
            StackSize=

            [Thread]
            # default
            StackSize=64K
            # default
            MaxThreads=16384

            [Fork]
            # default
            MaxChildren=4096

            [UDP]
            # default
            MaxBytesPerSecond=16M
            # default
            RatePerSource=1000
            # default
            BurstPerSource=auto

            [Debug]
            # default
            WatchdogTestTrigger=no

            """
        #expect(Configuration().rendered() == expected)
    }

    @Test func renderedShowsOrigins() throws {
        let base = try Fixture.parse("[Server]\nListen=127.0.0.1:1\nListen=[::1]:2\n", file: "/etc/echod/echod.conf")
        let config = try Fixture.parse(
            "[Server]\nStopTimeoutSec=2.5s\n[Limits]\nNoFile=1024\n", file: "/etc/echod/echod.conf.d/10-a.conf",
            on: base)
        let rendered = config.rendered()
        #expect(rendered.contains("# Read from, in order: /etc/echod/echod.conf, /etc/echod/echod.conf.d/10-a.conf\n"))
        #expect(
            rendered.contains(
                "# from /etc/echod/echod.conf:2\nListen=127.0.0.1:1\n# from /etc/echod/echod.conf:3\nListen=[::1]:2\n"))
        #expect(rendered.contains("# from /etc/echod/echod.conf.d/10-a.conf:2\nStopTimeoutSec=2500ms\n"))
        #expect(rendered.contains("# from /etc/echod/echod.conf.d/10-a.conf:4\nNoFile=1024\n"))
        #expect(rendered.contains("# default\nWorkers=0\n"))
    }

    static let roundTripTexts: [String] = [
        "[Server]\nWorkers=1\n",
        "[Server]\nListen=\n",
        "[Server]\nListen=[::1]:1\nListen=10.0.0.1:2\nMaxConnections=77\nBacklog=12\nStopTimeoutSec=1min 30s\n",
        "[Server]\nStopTimeoutSec=1us\nLogLevel=critical\n[Limits]\nNoFile=4294967295\n",
        "[Server]\nStopTimeoutSec=1.5ms\nMaxConnections=auto\nModel=event\n[Limits]\nNoFile=max\n",
    ]

    @Test(arguments: roundTripTexts)
    func renderedTextParsesBackToTheSameSettings(_ text: String) throws {
        let config = try Fixture.parse(text)
        let reparsed = try Fixture.parse(config.rendered(), file: "rendered.conf")
        #expect(Fixture.settingsOnly(reparsed) == Fixture.settingsOnly(config))
        // Every key is present in the rendered text, so every key has an origin when parsed back
        // (plus one per list element), except single-valued keys rendered empty ("left as
        // inherited"), which an empty assignment resets to the default without an origin.
        let emptySingles = ConfigurationKey.all.filter { !$0.isList && $0.render(config) == [""] }.count
        #expect(emptySingles == 3)  // NProc=, Core=, StackSize= in [Limits]
        #expect(reparsed.origins.count == ConfigurationKey.all.count - emptySingles + reparsed.listen.count)
    }

    @Test func renderedDefaultsParseBackToDefaults() throws {
        let reparsed = try Fixture.parse(Configuration().rendered())
        #expect(Fixture.settingsOnly(reparsed) == Configuration())
    }

    // MARK: Helpers kept for later keys

    @Test(arguments: [
        ("1", true), ("yes", true), ("y", true), ("true", true), ("t", true), ("on", true), ("YES", true), ("On", true),
        ("0", false), ("no", false), ("n", false), ("false", false), ("f", false), ("off", false), ("OFF", false),
    ])
    func systemdBooleanIsParsed(_ text: String, _ expected: Bool) {
        #expect(ConfigurationValueParser.boolean(text) == expected)
    }

    @Test(arguments: ["", "2", "yess", "enable", " yes"])
    func nonBooleanIsRejected(_ text: String) {
        #expect(ConfigurationValueParser.boolean(text) == nil)
    }

    @Test(arguments: [
        (Duration.seconds(10), "10s"), (.seconds(90), "90s"), (.milliseconds(2500), "2500ms"),
        (.microseconds(1500), "1500us"), (.microseconds(1), "1us"), (.seconds(3600), "3600s"),
    ])
    func timeSpanIsRenderedExactly(_ duration: Duration, _ expected: String) {
        #expect(ConfigurationValueParser.formatTimeSpan(duration) == expected)
    }

    @Test func resourceLimitValueDescription() {
        #expect(ResourceLimitValue.max.description == "max")
        #expect(ResourceLimitValue.value(65536).description == "65536")
    }
}
