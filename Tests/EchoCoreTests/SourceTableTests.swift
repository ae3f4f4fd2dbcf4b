// SPDX-License-Identifier: Apache-2.0
// The per-source room (issue 13 items 6, 7, 9): what one source is (SourceKey), the token
// bucket with an injected clock, and the bounded table (admit and release, the limits, a full
// table, reuse of entries that hold nothing, sharing across fork).
@testable import EchoCore
import Glibc
import Testing

@Suite struct SourceKeyTests {
    static func v6(_ text: String) -> in6_addr {
        var address = in6_addr()
        #expect(inet_pton(AF_INET6, text, &address) == 1)
        return address
    }

    static func v4(_ text: String) -> UInt32 {
        var address = in_addr()
        #expect(inet_pton(AF_INET, text, &address) == 1)
        return UInt32(bigEndian: address.s_addr)
    }

    @Test func ipv6AddressesInOnePrefixAreOneSource() {
        let a = SourceKey(ipv6: Self.v6("2001:db8:1:2:aaaa::1"), prefixIPv6: 64)
        let b = SourceKey(ipv6: Self.v6("2001:db8:1:2:ffff:1:2:3"), prefixIPv6: 64)
        let c = SourceKey(ipv6: Self.v6("2001:db8:1:3::1"), prefixIPv6: 64)
        #expect(a == b)
        #expect(a != c)
        #expect(a.description == "2001:db8:1:2::/64")
    }

    @Test func thePrefixLengthIsHonouredOnBothSidesOfSixtyFourBits() {
        // /48: the fourth group no longer counts.
        #expect(
            SourceKey(ipv6: Self.v6("2001:db8:1:2::1"), prefixIPv6: 48)
                == SourceKey(ipv6: Self.v6("2001:db8:1:ffff::1"), prefixIPv6: 48))
        // /56 cuts inside the fourth group: 2001:db8:1:2ff:: and 2001:db8:1:200:: share it.
        #expect(
            SourceKey(ipv6: Self.v6("2001:db8:1:2ff::1"), prefixIPv6: 56)
                == SourceKey(ipv6: Self.v6("2001:db8:1:200::9"), prefixIPv6: 56))
        #expect(
            SourceKey(ipv6: Self.v6("2001:db8:1:2ff::1"), prefixIPv6: 56)
                != SourceKey(ipv6: Self.v6("2001:db8:1:3ff::1"), prefixIPv6: 56))
        // /96 keeps part of the low half; /128 every bit.
        let k96 = SourceKey(ipv6: Self.v6("2001:db8::1:2:3:4"), prefixIPv6: 96)
        #expect(k96 == SourceKey(ipv6: Self.v6("2001:db8::1:2:ff:ff"), prefixIPv6: 96))
        #expect(k96 != SourceKey(ipv6: Self.v6("2001:db8::1:3:3:4"), prefixIPv6: 96))
        #expect(
            SourceKey(ipv6: Self.v6("2001:db8::1"), prefixIPv6: 128)
                != SourceKey(ipv6: Self.v6("2001:db8::2"), prefixIPv6: 128))
        #expect(SourceKey(ipv6: Self.v6("2001:db8::1"), prefixIPv6: 128).description == "2001:db8::1")
    }

    @Test func keysUnderDifferentPrefixesNeverAlias() {
        // 2001:db8:: cut to /48 and to /64 has the same bits; they are different sources.
        #expect(
            SourceKey(ipv6: Self.v6("2001:db8::1"), prefixIPv6: 48)
                != SourceKey(ipv6: Self.v6("2001:db8::1"), prefixIPv6: 64))
    }

    @Test func ipv4MappedIPv6IsTheIPv4Address() {
        let mapped = SourceKey(ipv6: Self.v6("::ffff:192.0.2.7"), prefixIPv6: 64)
        let plain = SourceKey(ipv4: Self.v4("192.0.2.7"))
        #expect(mapped == plain)
        #expect(mapped.isIPv4)
        #expect(mapped.description == "192.0.2.7")
        // Not cut to the prefix: the neighbour is another source.
        #expect(SourceKey(ipv6: Self.v6("::ffff:192.0.2.8"), prefixIPv6: 64) != plain)
        // An IPv6 address in ::/64 is not an IPv4 source.
        #expect(!SourceKey(ipv6: Self.v6("::1"), prefixIPv6: 64).isIPv4)
    }

    @Test func keysFromSocketAddresses() {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = UInt16(4242).bigEndian
        sin.sin_addr.s_addr = Self.v4("127.0.0.2").bigEndian
        let fromV4 = withUnsafePointer(to: &sin) { SourceKey(UnsafeRawPointer($0), prefixIPv6: 64) }
        #expect(fromV4 == SourceKey(ipv4: Self.v4("127.0.0.2")))
        var sin6 = sockaddr_in6()
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_addr = Self.v6("2001:db8:5::9")
        let fromV6 = withUnsafePointer(to: &sin6) { SourceKey(UnsafeRawPointer($0), prefixIPv6: 64) }
        #expect(fromV6?.description == "2001:db8:5::/64")
        var unix = sockaddr_un()
        unix.sun_family = sa_family_t(AF_UNIX)
        #expect(withUnsafePointer(to: &unix) { SourceKey(UnsafeRawPointer($0), prefixIPv6: 64) } == nil)
    }
}

@Suite struct TokenBucketTests {
    static let second: Int64 = 1_000_000_000

    @Test func aFullBucketAllowsTheBurstThenOneTokenPerInterval() {
        let bucket = TokenBucket(millisPerSecond: 2000, burst: 3)  // 2/s, 3 at once
        #expect(bucket.interval == Self.second / 2)
        #expect(bucket.burst == 3)
        var tat: Int64 = 0
        let start = 100 * Self.second
        #expect((0..<3).allSatisfy { _ in bucket.take(&tat, now: start) })
        #expect(!bucket.take(&tat, now: start))
        #expect(!bucket.take(&tat, now: start + Self.second / 2 - 1))
        #expect(bucket.take(&tat, now: start + Self.second / 2))
        #expect(!bucket.take(&tat, now: start + Self.second / 2))
        // After burst / rate seconds without arrivals the bucket is full again, and no fuller.
        #expect(!TokenBucket.isFull(tat, now: start + Self.second))
        #expect(TokenBucket.isFull(tat, now: start + 2 * Self.second))
        let later = start + 60 * Self.second
        #expect((0..<3).allSatisfy { _ in bucket.take(&tat, now: later) })
        #expect(!bucket.take(&tat, now: later))
    }

    @Test func aRefusedArrivalTakesNothing() {
        // A source hammering an empty bucket is admitted at the rate, not starved.
        let bucket = TokenBucket(millisPerSecond: 10_000, burst: 1)  // 10/s
        var tat: Int64 = 0
        var admitted = 0
        // One attempt every millisecond for 2 s: 1 + 20 tokens (one at start, one per 100 ms).
        for ms in 0..<2000 where bucket.take(&tat, now: Self.second + Int64(ms) * 1_000_000) { admitted += 1 }
        #expect(admitted == 20)
    }

    @Test func slowRatesWork() {
        let bucket = TokenBucket(millisPerSecond: 500, burst: 1)  // one every 2 s
        var tat: Int64 = 0
        #expect(bucket.take(&tat, now: Self.second))
        #expect(!bucket.take(&tat, now: 2 * Self.second))
        #expect(bucket.take(&tat, now: 3 * Self.second))
    }
}

@Suite struct SourceTableTests {
    static let second: Int64 = 1_000_000_000
    static func key(_ n: Int) -> SourceKey { SourceKey(ipv4: 0x0A00_0000 | UInt32(n)) }

    static func ticket(_ admission: SourceTable.Admission) -> SourceTicket? {
        if case .admitted(let t) = admission { return t }
        return nil
    }

    @Test func capacityIsAPowerOfTwoAtLeastTwiceTheConnectionLimit() {
        #expect(SourceTable.capacity(forMaxConnections: 10) == 1024)
        #expect(SourceTable.capacity(forMaxConnections: 4000) == 8192)
        #expect(SourceTable.capacity(forMaxConnections: 10_000_000) == SourceTable.maxCapacity)
    }

    @Test func withoutLimitsEverythingIsAdmittedAndCounted() throws {
        let table = try SourceTable(capacity: 64, seed: 1)
        let t1 = try #require(Self.ticket(table.admit(Self.key(1), now: Self.second)))
        let t2 = try #require(Self.ticket(table.admit(Self.key(1), now: Self.second)))
        #expect(t1 == t2 && t1.isTracked)
        #expect(table.connections(of: Self.key(1)) == 2)
        table.release(t1)
        table.release(t2)
        #expect(table.connections(of: Self.key(1)) == 0)
        #expect(table.refusals == .init())
    }

    @Test func theConnectionLimitIsPerSourceAndFreedOnRelease() throws {
        let table = try SourceTable(capacity: 64, seed: 2)
        table.apply(.init(maxConnections: 2))
        let a = try #require(Self.ticket(table.admit(Self.key(1), now: Self.second)))
        _ = try #require(Self.ticket(table.admit(Self.key(1), now: Self.second)))
        #expect(table.admit(Self.key(1), now: Self.second) == .refused(.perSource))
        // Another source is not held back.
        #expect(Self.ticket(table.admit(Self.key(2), now: Self.second)) != nil)
        table.release(a)
        #expect(Self.ticket(table.admit(Self.key(1), now: Self.second)) != nil)
        #expect(table.refusals.perSource == 1)
        #expect(table.lastRefused == Self.key(1))
    }

    @Test func aLowerLimitClosesNothingAndOpenConnectionsCountAgainstIt() throws {
        let table = try SourceTable(capacity: 64, seed: 3)
        var tickets: [SourceTicket] = []
        for _ in 0..<3 { tickets.append(try #require(Self.ticket(table.admit(Self.key(1), now: Self.second)))) }
        table.apply(.init(maxConnections: 2))  // a reload
        #expect(table.connections(of: Self.key(1)) == 3)
        #expect(table.admit(Self.key(1), now: Self.second) == .refused(.perSource))
        table.release(tickets.removeLast())
        #expect(table.admit(Self.key(1), now: Self.second) == .refused(.perSource))
        table.release(tickets.removeLast())
        #expect(Self.ticket(table.admit(Self.key(1), now: Self.second)) != nil)
    }

    @Test func theRateLimitHoldsATightLoopAtTheRateAndSparesOthers() throws {
        let table = try SourceTable(capacity: 64, seed: 4)
        table.apply(.init(rate: TokenBucket(millisPerSecond: 5000, burst: 2)))  // 5/s, 2 at once
        var admitted = 0
        // Source 1 connects (and closes) every millisecond for one second.
        for ms in 0..<1000 {
            let now = Self.second + Int64(ms) * 1_000_000
            if let t = Self.ticket(table.admit(Self.key(1), now: now)) {
                admitted += 1
                table.release(t)
            }
            if ms % 250 == 0 {
                // Source 2, every 250 ms (within its own 5/s): always admitted.
                let t = try #require(Self.ticket(table.admit(Self.key(2), now: now)))
                table.release(t)
            }
        }
        #expect(admitted == 2 + 4)  // the burst, then one every 200 ms (at 200, 400, 600, 800)
        #expect(table.refusals.rate == UInt64(1000 - admitted))
        #expect(table.refusals.perSource == 0)
    }

    @Test func aFullTableRefusesNewSourcesOnlyWhileALimitIsSet() throws {
        let table = try SourceTable(capacity: 8, seed: 5)  // the window is the whole table
        table.apply(.init(maxConnections: 10))
        var tickets: [SourceTicket] = []
        for n in 0..<8 { tickets.append(try #require(Self.ticket(table.admit(Self.key(n), now: Self.second)))) }
        #expect(table.admit(Self.key(100), now: Self.second) == .refused(.tableFull))
        #expect(table.refusals.tableFull == 1)
        // Known sources are still served.
        #expect(Self.ticket(table.admit(Self.key(3), now: Self.second)) != nil)
        // No limit set: admitted, untracked.
        table.apply(.init())
        #expect(table.admit(Self.key(101), now: Self.second) == .admitted(.untracked))
        #expect(table.untracked == 1)
        table.release(.untracked)  // a no-op
        // An entry whose source closed its last connection (full bucket) is reused.
        table.apply(.init(maxConnections: 10))
        table.release(tickets[5])
        let reused = try #require(Self.ticket(table.admit(Self.key(100), now: Self.second)))
        #expect(reused == tickets[5])
        #expect(table.connections(of: Self.key(100)) == 1)
        #expect(table.connections(of: Self.key(5)) == 0)
        #expect(table.usedEntries == 8)
    }

    @Test func anEntryWithABucketStillRefillingIsNotReusedUntilItIsFull() throws {
        let table = try SourceTable(capacity: 4, seed: 6)
        table.apply(.init(rate: TokenBucket(millisPerSecond: 1000, burst: 1)))  // 1/s
        for n in 0..<4 {
            let t = try #require(Self.ticket(table.admit(Self.key(n), now: Self.second)))
            table.release(t)  // no connection open, but each bucket is empty for one second
        }
        #expect(table.admit(Self.key(9), now: Self.second + Self.second / 2) == .refused(.tableFull))
        // Forgetting source 0 now would hand it a full bucket: only once its own is full.
        #expect(Self.ticket(table.admit(Self.key(9), now: 2 * Self.second)) != nil)
    }

    @Test func theTableIsSharedWithAForkedChild() throws {
        let table = try SourceTable(capacity: 64, seed: 7)
        table.apply(.init(maxConnections: 1))
        let pid = fork()
        if pid == 0 {
            // The child takes source 1's only place; the parent must see it.
            if case .admitted = table.admit(Self.key(1), now: Self.second) { _exit(0) }
            _exit(1)
        }
        var status: Int32 = 0
        #expect(waitpid(pid, &status, 0) == pid)
        #expect(status == 0)
        #expect(table.connections(of: Self.key(1)) == 1)
        #expect(table.admit(Self.key(1), now: Self.second) == .refused(.perSource))
    }

    @Test func aConnectionEntryKeepsItsTicketInThirtyTwoBytes() {
        var c = Connection()
        #expect(c.source == .untracked)
        c.source = SourceTicket(index: Int32(SourceTable.maxCapacity - 1))
        #expect(c.source.index == Int32(SourceTable.maxCapacity - 1))
        c.source = SourceTicket(index: 0)
        #expect(c.source.index == 0)
        #expect(MemoryLayout<Connection>.stride == 32)
    }
}

@Suite struct SourceLimitKeyTests {
    private typealias Fixture = ConfigFixture

    @Test func defaultsAreOff() {
        let config = Configuration()
        #expect(SourceTable.Limits(config) == .init())
        let rendered = config.rendered()
        for line in [
            "MaxConnectionsPerSource=infinity", "MaxConnectionRatePerSource=infinity",
            "MaxConnectionBurstPerSource=auto", "SourcePrefixIPv6=64",
        ] {
            #expect(rendered.contains("# default\n\(line)\n"))
        }
    }

    @Test(arguments: [
        ("10", 10_000), ("0.5", 500), ("0.001", 1), ("2.25/s", 2250), ("30/min", 500), ("1000000", 1_000_000_000),
    ])
    func ratesAreAccepted(_ text: String, _ millis: Int) throws {
        let config = try Fixture.parse("[Server]\nMaxConnectionRatePerSource=\(text)\n")
        #expect(config.maxConnectionRatePerSource == millis)
        let again = try Fixture.parse(config.rendered())
        #expect(again.maxConnectionRatePerSource == millis)
    }

    @Test(arguments: ["1000001", "0.0001", "-1", "1e3", ".5", "5.", "ten", "5/h", "0.0005/min"])
    func otherRatesAreRejected(_ text: String) {
        #expect(
            Fixture.rejection(of: "[Server]\nMaxConnectionRatePerSource=\(text)\n") == [
                "test.conf:2: invalid value '\(text)' for MaxConnectionRatePerSource=: expected connections per second "
                    + "from 0.001 to 1000000, e.g. '10', '0.5/s', '30/min', or 'infinity' (or 0) for none"
            ])
    }

    @Test func theKeysMakeTheTableLimits() throws {
        let config = try Fixture.parse(
            "[Server]\nMaxConnectionsPerSource=4\nMaxConnectionRatePerSource=20\nSourcePrefixIPv6=/48\n")
        let limits = SourceTable.Limits(config)
        #expect(limits.maxConnections == 4)
        #expect(limits.rate == TokenBucket(millisPerSecond: 20_000, burst: 20))  // auto: a second's worth
        #expect(limits.prefixIPv6 == 48)
        let withBurst = try Fixture.parse("[Server]\nMaxConnectionRatePerSource=0.5\nMaxConnectionBurstPerSource=3\n")
        #expect(SourceTable.Limits(withBurst).rate == TokenBucket(millisPerSecond: 500, burst: 3))
        // auto never gives an empty bucket.
        let slow = try Fixture.parse("[Server]\nMaxConnectionRatePerSource=0.5\n")
        #expect(SourceTable.Limits(slow).rate?.burst == 1)
        let off = try Fixture.parse("[Server]\nMaxConnectionsPerSource=0\nMaxConnectionRatePerSource=0\n")
        #expect(!SourceTable.Limits(off).isLimiting)
    }

    @Test func badValuesNameTheKeyAndWhatWasExpected() {
        #expect(
            Fixture.rejection(of: "[Server]\nMaxConnectionsPerSource=-2\n") == [
                "test.conf:2: invalid value '-2' for MaxConnectionsPerSource=: expected a number from 1 to 10000000, "
                    + "or 'infinity' (or 0) for none"
            ])
        #expect(
            Fixture.rejection(of: "[Server]\nSourcePrefixIPv6=129\n") == [
                "test.conf:2: invalid value '129' for SourcePrefixIPv6=: expected a number from 1 to 128"
            ])
        #expect(
            Fixture.rejection(of: "[Server]\nMaxConnectionBurstPerSource=0\n") == [
                "test.conf:2: invalid value '0' for MaxConnectionBurstPerSource=: expected a number from 1 to 1000000, "
                    + "or 'auto'"
            ])
    }

    @Test func everyPerSourceKeyIsLiveOnReload() {
        for name in ["MaxConnectionsPerSource", "MaxConnectionRatePerSource", "MaxConnectionBurstPerSource", "SourcePrefixIPv6"] {
            #expect(ConfigurationKey.find(section: "Server", name: name)?.onReload == .live, "\(name)")
        }
    }
}
