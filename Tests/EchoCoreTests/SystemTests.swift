// SPDX-License-Identifier: Apache-2.0

import CEchoShims
import Logging
import Glibc
import Testing

@testable import EchoCore

@Suite struct SocketAddressTests {
    @Test(arguments: [
        ("127.0.0.1:7007", "127.0.0.1:7007", AF_INET),
        ("0.0.0.0:7", "0.0.0.0:7", AF_INET),
        ("[::1]:7007", "[::1]:7007", AF_INET6),
        ("[::]:0", "[::]:0", AF_INET6),
        ("[fe80::1]:65535", "[fe80::1]:65535", AF_INET6),
    ])
    func parsesAndPrints(input: String, printed: String, family: Int32) throws {
        let a = try SocketAddress(parsing: input)
        #expect(a.description == printed)
        #expect(a.family == family)
    }

    @Test(arguments: [
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:65536", "port must be a number from 0 to 65535"),
        ("127.0.0.1:-1", "port must be a number from 0 to 65535"),
        ("127.0.0.1:", "port must be a number from 0 to 65535"),
        ("::1:7007", "IPv6 addresses must be written in brackets"),
        ("[::1:7007", "missing ']'"),
        ("[::1]7007", "expected ':PORT' after ']'"),
        ("localhost:7", "'localhost' is not an IPv4 address"),
        ("[127.0.0.1]:7", "'127.0.0.1' is not an IPv6 address"),
        (":7", "missing host"),
    ])
    func rejects(input: String, reason: String) {
        #expect {
            _ = try SocketAddress(parsing: input)
        } throws: { error in
            let e = error as! SocketAddress.ParseError
            return e.reason.contains(reason) && e.description.contains(input)
        }
    }

    @Test func portCanBeChanged() throws {
        var a = try SocketAddress(parsing: "[::1]:1")
        a.port = 4242
        #expect(a.description == "[::1]:4242")
    }
}

@Suite struct SystemErrorTests {
    /// A real call made to fail: the error names the call and the errno.
    @Test func bindConflictNamesCallAndErrno() throws {
        let (fd, address) = try makeLoopbackListener()
        defer { closeNoRetry(fd) }
        #expect {
            _ = try Socket.listen(on: address, backlog: 1)
        } throws: { error in
            let e = error as! SystemError
            return e.errno == EADDRINUSE && e.description == "bind(\(address)): Address already in use (errno 98)"
        }
    }

    @Test func nonBlockingReadReportsWouldBlock() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, CEchoShims_SOCK_STREAM | CEchoShims_SOCK_NONBLOCK, 0, &fds) == 0)
        defer { closeNoRetry(fds[0]); closeNoRetry(fds[1]) }
        var byte: UInt8 = 0
        let r = try syscallNonBlocking("read") { read(fds[0], &byte, 1) }
        #expect(r == .wouldBlock)
        var one: UInt8 = 7
        _ = write(fds[1], &one, 1)
        let r2 = try syscallNonBlocking("read") { read(fds[0], &byte, 1) }
        #expect(r2 == .processed(1))
        #expect(byte == 7)
    }

    @Test func socketKindTellsListenersFromOthers() throws {
        let (fd, _) = try makeLoopbackListener()
        defer { closeNoRetry(fd) }
        #expect(Socket.kind(of: fd) == .listeningStream)
        let udp = socket(AF_INET, CEchoShims_SOCK_DGRAM, 0)
        defer { closeNoRetry(udp) }
        #expect(Socket.kind(of: udp) == .datagram)
        let unixDatagram = socket(AF_UNIX, CEchoShims_SOCK_DGRAM, 0)
        defer { closeNoRetry(unixDatagram) }
        #expect(Socket.kind(of: unixDatagram) == .notStream(type: CEchoShims_SOCK_DGRAM))
        #expect(Socket.kind(of: unixDatagram).description == "a datagram socket that is not IPv4 or IPv6")
        let tcp = socket(AF_INET, CEchoShims_SOCK_STREAM, 0)
        defer { closeNoRetry(tcp) }
        #expect(Socket.kind(of: tcp) == .notListening)
        let devnull = open("/dev/null", O_RDONLY)
        defer { closeNoRetry(devnull) }
        #expect(Socket.kind(of: devnull) == .notASocket)
    }

    @Test func resourceLimitRoundTrip() throws {
        let before = try ResourceLimits.get(ResourceLimits.noFile)
        defer { try? ResourceLimits.set(ResourceLimits.noFile, before) }
        let lower = ResourceLimit(soft: min(before.soft, 512), hard: before.hard)
        try ResourceLimits.set(ResourceLimits.noFile, lower)
        #expect(try ResourceLimits.get(ResourceLimits.noFile) == lower)
        #expect(ResourceLimit.format(UInt64.max) == "infinity")
    }

    @Test func signalfdDeliversABlockedSignal() throws {
        // SIGUSR2 is blocked only in this thread's mask while the test runs.
        Signals.block([SIGUSR2])
        defer { Signals.unblock([SIGUSR2]) }
        let sfd = try SignalFD([SIGUSR2])
        #expect(try sfd.next() == nil)
        pthread_kill(pthread_self(), SIGUSR2)
        #expect(try sfd.next() == SIGUSR2)
        #expect(try sfd.next() == nil)
    }
}

@Suite struct ConnectionTableTests {
    @Test func slotsAreReusedWithANewGeneration() {
        var t = ConnectionTable(initialCapacity: 2)
        let a = t.allocate(fd: 10)
        let gen = t.entry(a).pointee.generation
        #expect(t.entry(a, generation: gen) != nil)
        t.free(a)
        #expect(t.entry(a, generation: gen) == nil, "an event for the closed connection must be stale")
        let b = t.allocate(fd: 10)
        #expect(b == a)
        #expect(t.entry(b, generation: gen) == nil, "same slot and fd, new generation: old token must not match")
        #expect(t.entry(b, generation: t.entry(b).pointee.generation) != nil)
        #expect(t.count == 1)
    }

    @Test func growsPastInitialCapacityKeepingEntries() {
        var t = ConnectionTable(initialCapacity: 2)
        var slots: [Int32] = []
        for fd in 100..<150 { slots.append(t.allocate(fd: Int32(fd))) }
        #expect(t.count == 50)
        #expect(t.capacity >= 50)
        for (i, s) in slots.enumerated() { #expect(t.entry(s).pointee.fd == Int32(100 + i)) }
        #expect(Set(slots).count == 50)
        for s in slots { t.free(s) }
        #expect(t.count == 0)
        #expect(t.usedSlots().isEmpty)
    }

    @Test func entryIsSmall() {
        // The idle-connection budget: one table entry, no buffer.
        #expect(MemoryLayout<Connection>.stride <= 32)
    }
}

@Suite struct LogHandlerTests {
    @Test func journalLinesCarryPriorityAndNoTimestamp() {
        let line = EchodLogHandler.format(
            level: .warning, message: "accept failed", metadata: ["b": "2", "a": "1"], journal: true, label: "echod")
        #expect(line == "<4>accept failed a=1 b=2\n")
    }

    @Test func plainLinesCarryLevelAndPid() {
        let line = EchodLogHandler.format(level: .info, message: "listening", metadata: [:], journal: false, label: "echod")
        #expect(line.hasSuffix(" echod[\(getpid())]: info: listening\n"))
        #expect(line.first?.isNumber == true)
    }

    @Test func newlinesCannotForgeRecords() {
        let line = EchodLogHandler.format(level: .error, message: "a\nb", metadata: ["k": "x\ny"], journal: true, label: "e")
        #expect(line == "<3>a\\nb k=x\\ny\n")
    }

    @Test(arguments: [
        (Logger.Level.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2),
    ])
    func priorities(level: Logger.Level, priority: Int) {
        #expect(EchodLogHandler.priority(level) == priority)
    }

    @Test func levelSettingIsShared() {
        let setting = LogLevelSetting(.info)
        var h = EchodLogHandler(label: "t", setting: setting, fd: 2, journal: false)
        h.logLevel = .debug
        #expect(setting.level == .debug)
    }

    @Test func bytesFormatting() {
        #expect(formatBytes(0) == "0 B")
        #expect(formatBytes(1023) == "1023 B")
        #expect(formatBytes(1536) == "1.5 KiB")
        #expect(formatBytes(3 * 1024 * 1024) == "3.0 MiB")
    }
}

@Suite struct WatchdogTests {
    @Test func pingsOnlyWhileEveryWorkerAdvances() {
        var w = Watchdog(interval: 1_000_000_000, start: 0)
        #expect(w.nextCheck == 500_000_000)
        #expect(w.check([1, 1], now: 500_000_000) == .ping)  // first look: nothing to compare
        #expect(w.nextCheck == 1_000_000_000)
        #expect(w.check([2, 5], now: 1_000_000_000) == .ping)
        #expect(w.check([3, 5], now: 1_500_000_000) == .stalled([1]))
        #expect(w.check([4, 5], now: 2_000_000_000) == .quiet, "a stall is reported once")
        #expect(w.check([5, 6], now: 2_500_000_000) == .ping, "pings resume when the worker moves again")
        #expect(w.check([5, 6], now: 3_000_000_000) == .stalled([0, 1]))
    }

    @Test func noProgressCountersMeansTheControlLoopAloneDecides() {
        var w = Watchdog(interval: 2_000_000_000, start: 0)
        #expect(w.check([], now: 1_000_000_000) == .ping)
        #expect(w.check([], now: 2_000_000_000) == .ping)
    }

    @Test func offWithoutAnInterval() {
        #expect(Watchdog(interval: nil, start: 0).nextCheck == nil)
    }
}
