// SPDX-License-Identifier: Apache-2.0
// Pure pieces of the engine: the payload pattern, the parsers, JSON, and exact merging.
import EchoCore
@testable import EchoLoad
import Glibc
import Testing

@Suite struct PatternTests {
    /// `count` bytes of the stream of the connection with `key` from `position`, as sent.
    func stream(_ key: UInt64, _ position: UInt64, _ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        while out.count < count {
            let (p, n) = Pattern.segment(key: key, position: position + UInt64(out.count))
            out += UnsafeBufferPointer(start: p, count: min(n, count - out.count))
        }
        return out
    }

    func mismatch(_ bytes: [UInt8], _ key: UInt64, _ position: UInt64) -> Int? {
        bytes.withUnsafeBytes { Pattern.firstMismatch($0.baseAddress!, count: bytes.count, key: key, position: position) }
    }

    /// The old seeds repeated every 65,521 connections; keys never repeat.
    @Test func keysAreDistinctAcrossConnections() {
        var seen = Set<UInt64>()
        for i in 0..<200_000 { seen.insert(Pattern.key(forConnection: i)) }
        #expect(seen.count == 200_000)
        let a = Pattern.key(forConnection: 5)
        let b = Pattern.key(forConnection: 5 + 65_521)
        #expect(mismatch(stream(b, 0, 4096), a, 0) != nil)
    }

    @Test func anEchoOfTheStreamMatches() {
        let key = Pattern.key(forConnection: 7)
        // Across block boundaries, in uneven chunks.
        var position = UInt64(Pattern.blockSize - 1000)
        for chunk in [1, 999, 1, 4096, 70_000, Pattern.blockSize * 3] {
            #expect(mismatch(stream(key, position, chunk), key, position) == nil)
            position += UInt64(chunk)
        }
    }

    @Test func aFlippedByteIsFoundAtItsOffset() {
        let key = Pattern.key(forConnection: 3)
        var copy = stream(key, 100, 40_000)
        copy[34_321] ^= 0x01
        #expect(mismatch(copy, key, 100) == 34_321)
    }

    @Test func aShiftedOrForeignStreamIsFound() {
        let key = Pattern.key(forConnection: 3)
        // One byte lost: the rest of the stream arrives one position early.
        #expect(mismatch(stream(key, 1, 256), key, 0) != nil)
        // Another connection's bytes at the same position (cross-talk).
        #expect(mismatch(stream(Pattern.key(forConnection: 4), 0, 256), key, 0) != nil)
    }

    /// Item 5: old data replayed from any distance back is caught, including the old pattern's
    /// period (65,521), the table's period, the block size, their products and large powers of
    /// two (the 64-bit offset feeds the block hash whole).
    @Test(arguments: [65_521, 16_384, 262_139, 65_521 * 16_384, 262_139 * 16_384, 1 << 32, 1 << 40, 1 << 56])
    func aReplayFromAnyDistanceIsCaught(distance: Int) {
        let key = Pattern.key(forConnection: 11)
        for position in [UInt64(distance), UInt64(distance) + 12_345] {
            let old = stream(key, position - UInt64(distance), 3 * Pattern.blockSize)
            #expect(mismatch(old, key, position) != nil, "a replay from \(distance) bytes back passed")
        }
    }

    /// `Pattern.send` spans blocks with one sendmsg; what arrives is the stream.
    @Test func sendSpansBlocks() throws {
        var fds: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        var size: Int32 = 1 << 20
        setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &size, 4)
        setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &size, 4)
        let key = Pattern.key(forConnection: 9)
        let position = UInt64(3 * Pattern.blockSize - 77)
        let sent = Pattern.send(fds[0], key: key, position: position, count: 50_000)
        guard case .transferred(let n) = sent else { Issue.record("send: \(sent)"); return }
        try #require(n > Pattern.blockSize, "sent \(n)")
        var buffer = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = buffer.withUnsafeMutableBytes { recv(fds[1], $0.baseAddress! + got, n - got, 0) }
            try #require(r > 0)
            got += r
        }
        #expect(mismatch(buffer, key, position) == nil)
    }
}

@Suite struct ParsingTests {
    @Test func durations() {
        #expect(LoadParsing.duration("10") == 10_000_000_000)
        #expect(LoadParsing.duration("10s") == 10_000_000_000)
        #expect(LoadParsing.duration("1.5s") == 1_500_000_000)
        #expect(LoadParsing.duration("250ms") == 250_000_000)
        #expect(LoadParsing.duration("2m") == 120_000_000_000)
        #expect(LoadParsing.duration("-1") == nil)
        #expect(LoadParsing.duration("ten") == nil)
    }

    @Test func rates() {
        #expect(LoadParsing.rate("1000") == 1000)
        #expect(LoadParsing.rate("1000/s") == 1000)
        #expect(LoadParsing.rate("60/m") == 1)
        #expect(LoadParsing.rate("0") == nil)
        #expect(LoadParsing.rate("fast") == nil)
    }

    @Test func sourceRangesAndLists() throws {
        let range = try LoadParsing.sources("127.0.0.2-127.0.0.250")
        #expect(range.count == 249)
        #expect(range.first?.description == "127.0.0.2:0")
        #expect(range.last?.description == "127.0.0.250:0")
        #expect(try LoadParsing.sources("127.0.0.2,127.0.1.255-127.0.2.1,::1").map(\.description)
            == ["127.0.0.2:0", "127.0.1.255:0", "127.0.2.0:0", "127.0.2.1:0", "[::1]:0"])
        #expect(throws: LoadError.self) { try LoadParsing.sources("127.0.0.9-127.0.0.2") }
        #expect(throws: LoadError.self) { try LoadParsing.sources("127.0.0.300") }
    }

    @Test func targets() throws {
        #expect(try LoadParsing.target("127.0.0.1:7").description == "127.0.0.1:7")
        #expect(try LoadParsing.target("[::1]:7007").description == "[::1]:7007")
        #expect(try LoadParsing.target("localhost:9").description == "127.0.0.1:9")
        #expect(throws: LoadError.self) { try LoadParsing.target("127.0.0.1") }
        #expect(throws: LoadError.self) { try LoadParsing.target("127.0.0.1:0") }
        #expect(throws: LoadError.self) { try LoadParsing.target("nosuchhost.invalid:7") }
    }

    @Test func impossibleCombinationsAreUsageErrors() throws {
        let target = try LoadParsing.target("127.0.0.1:7")
        var o = LoadOptions(mode: .rate, target: target, connections: 4)
        #expect(throws: LoadError.self) { try o.validate() }  // rate without --rate
        o.rate = 100
        try o.validate()
        o.processes = 5
        #expect(throws: LoadError.self) { try o.validate() }
        o.processes = 1
        o.sources = try LoadParsing.sources("::1")
        #expect(throws: LoadError.self) { try o.validate() }
    }
}

@Suite struct ReportTests {
    @Test func jsonRoundTrips() throws {
        let text = #"{"a":[1,-2,3.5,"x\"y\n",true,false,null],"b":{"c":{}},"d":[]}"#
        let v = try JSONValue(parsing: text)
        #expect(v.text == text)
        #expect(try JSONValue(parsing: v.prettyText) == v)
        #expect(throws: JSONValue.ParseError.self) { try JSONValue(parsing: "{\"a\":1,}") }
        #expect(throws: JSONValue.ParseError.self) { try JSONValue(parsing: "[1] x") }
    }

    @Test func tallyMergesExactlyThroughTheWire() throws {
        var a = Tally()
        var b = Tally()
        a.requested = 3; a.established = 3; a.messages = 1000; a.ioErrors["ECONNRESET"] = 1
        b.requested = 2; b.established = 1; b.connectFailures["ECONNREFUSED"] = 1; b.messages = 500; b.mismatches = 2
        var ha = Latency.makeHistogram()
        var hb = Latency.makeHistogram()
        for i in 0..<1000 { Latency.record(Int64(20_000 + i * 37), into: &ha) }
        for i in 0..<500 { Latency.record(Int64(1_000_000 + i * 9_999), into: &hb) }
        a.latency = ha
        b.latency = hb
        var direct = a
        direct.merge(b)
        var wired = Tally(wire: try JSONValue(parsing: a.wireJSON.text))
        wired.merge(Tally(wire: try JSONValue(parsing: b.wireJSON.text)))
        #expect(wired.requested == 5 && wired.established == 4 && wired.messages == 1500)
        #expect(wired.connectFailures == ["ECONNREFUSED": 1] && wired.ioErrors == ["ECONNRESET": 1] && wired.mismatches == 2)
        let (d, w) = (direct.latency!, wired.latency!)
        #expect(w.totalCount == 1500)
        for p in [0.0, 50, 90, 99, 99.9, 100] { #expect(d.valueAtPercentile(p) == w.valueAtPercentile(p)) }
        #expect(d.max == w.max && d.min == w.min)
    }

    @Test func optionsTravelToChildrenIntact() throws {
        var o = LoadOptions(mode: .rate, target: try LoadParsing.target("[::1]:7007"), connections: 10)
        o.rate = 1234.5
        o.size = 99
        o.sources = try LoadParsing.sources("::1")
        o.connectionIndexBase = 40
        o.totalConnections = 77
        o.failUnderRate = 0.9
        o.model = .thread
        #expect(try LoadOptions(wire: try JSONValue(parsing: o.wireJSON.text)) == o)
    }

    /// The connections are split; the rate is not: every child lays out its connections' share
    /// of the run's one schedule (rate and total connection count of the whole run).
    @Test func processPlanSplitsConnectionsNotTheSchedule() throws {
        var o = LoadOptions(mode: .rate, target: try LoadParsing.target("127.0.0.1:7"), connections: 10)
        o.rate = 1000
        o.processes = 3
        let plan = ProcessDriver.plan(o)
        #expect(plan.map(\.connections) == [4, 3, 3])
        #expect(plan.map(\.connectionIndexBase) == [0, 4, 7])
        #expect(plan.allSatisfy { $0.rate == 1000 && $0.totalConnections == 10 })
        o.model = .fork
        o.processes = 1
        #expect(ProcessDriver.plan(o).count == 10)
        #expect(ProcessDriver.plan(o).allSatisfy { $0.model == .thread && $0.connections == 1 })
    }
}
