// SPDX-License-Identifier: Apache-2.0
// The restart hand-over, built in-process: a real channel (AF_UNIX datagram socketpair), real
// TCP connections on loopback, and every kind of descriptor or message a start must refuse.
import CEchoShims
import Glibc
import Logging
import Testing

@testable import EchoCore

/// Loopback connections: the clients' ends and the accepted (server) ends.
private final class Connections {
    let listener: Int32
    var clients: [TestClient] = []
    var servers: [Int32] = []

    init(_ count: Int) throws {
        let (fd, address) = try makeLoopbackListener()
        listener = fd
        for _ in 0..<count {
            clients.append(try TestClient(connectingTo: address))
            var accepted: Int32 = -1
            #expect(eventually { accepted = CEchoShims_accept4(fd, nil, nil, CEchoShims_SOCK_CLOEXEC); return accepted >= 0 })
            servers.append(accepted)
        }
    }

    deinit {
        close(listener)
        for fd in servers where fd >= 0 { close(fd) }
    }

    /// Closes the server ends (after they were sent: the copies in flight keep the connections).
    func closeServerEnds() {
        for fd in servers where fd >= 0 { close(fd) }
        servers = servers.map { _ in -1 }
    }
}

/// Whether the server side of `client`'s connection was closed (every copy): the client sees
/// EOF or a reset within two seconds, not silence. (Counting the process's descriptors would
/// not do: other suites open and close theirs in parallel.)
private func sawEnd(_ client: TestClient) -> Bool {
    var pfd = pollfd(fd: client.fd, events: Int16(POLLIN), revents: 0)
    guard poll(&pfd, 1, 2000) > 0 else { return false }
    var byte: UInt8 = 0
    let n = recv(client.fd, &byte, 1, Int32(MSG_DONTWAIT))
    return n == 0 || (n < 0 && errno != EAGAIN)
}

private let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// Sends one message of the format by hand (for malformed cases).
private func sendRaw(_ sender: Int32, _ payload: [UInt8], fds: [Int32]) {
    let rc = payload.withUnsafeBytes { p in
        fds.withUnsafeBufferPointer { CEchoShims_send_fds(sender, p.baseAddress, p.count, $0.baseAddress, Int32($0.count)) }
    }
    #expect(rc == payload.count)
}

/// A memfd holding `bytes`.
private func memfd(_ bytes: [UInt8]) throws -> FileDescriptor {
    let fd = FileDescriptor(owning: CEchoShims_memfd_create("test"))
    let n = bytes.withUnsafeBytes { pwrite(fd.rawValue, $0.baseAddress, $0.count, 0) }
    #expect(n == bytes.count)
    return fd
}

/// A chunk's state file for `fds`, each with `pending` as its pending bytes.
private func stateFile(_ fds: [Int32], pending: [UInt8], segment: UInt64) throws -> FileDescriptor {
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, pending.count), alignment: 1)
    defer { copy.deallocate() }
    copy.copyBytes(from: pending)
    let p = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(copy)[0..<pending.count])
    return try Handover.writeState(fds.map { HandoverItem(fd: $0, pending: p) }[...], segment: segment)
}

/// Records what would go to systemd.
private final class RecordingNotifier: ServiceNotifier, @unchecked Sendable {
    var sent: [String] = []
    func notify(_ assignments: String) { sent.append(assignments) }
    var watchdogInterval: Duration? { nil }
}

@Suite(.serialized) struct HandoverTests {
    /// 300 connections (two chunks) with pending bytes on some come out in order, each the
    /// same connection (a byte written through the received descriptor reaches its client),
    /// with its pending bytes.
    @Test func segmentRoundTripKeepsOrderAndPendingBytes() throws {
        let channel = try HandoverChannel()
        let conns = try Connections(300)
        let pending: [[UInt8]] = (0..<300).map { i in i % 7 == 0 ? patterned(1 + i * 97 % 65536, seed: UInt64(i)) : [] }
        let (sent, error) = pending.withPointers { pointers in
            let items = (0..<300).map { HandoverItem(fd: conns.servers[$0], pending: pointers[$0]) }
            return Handover.sendSegment(items, over: channel.sender.rawValue, segment: Handover.segmentID(index: 3))
        }
        #expect(sent == 300)
        #expect(error == nil)
        conns.closeServerEnds()
        let receipt = Handover.receive(from: channel.receiver.rawValue, logger: quiet)
        #expect(receipt.chunks == 2)
        #expect(receipt.rejected == 0)
        try #require(receipt.connections.count == 300)
        for (i, c) in receipt.connections.enumerated() {
            #expect(c.pending == pending[i], "connection \(i)")
            let marker = [UInt8(i & 0xFF), UInt8(i >> 8)]
            #expect(send(c.rawValue, marker, 2, Int32(MSG_NOSIGNAL)) == 2)
            #expect(try conns.clients[i].receive(exactly: 2) == marker)
        }
    }

    /// Contributors send on one channel at once (event workers, worker processes): their
    /// chunks interleave, each arrives whole.
    @Test func segmentsOfSeveralSendersInterleave() throws {
        let channel = try HandoverChannel()
        let a = try Connections(260)
        let b = try Connections(5)
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        let aItems = a.servers.map { HandoverItem(fd: $0, pending: none) }
        let bItems = b.servers.map { HandoverItem(fd: $0, pending: none) }
        #expect(Handover.sendSegment(Array(aItems[0..<252]), over: channel.sender.rawValue, segment: 1).sent == 252)
        #expect(Handover.sendSegment(bItems, over: channel.sender.rawValue, segment: 2).sent == 5)
        #expect(Handover.sendSegment(Array(aItems[252...]), over: channel.sender.rawValue, segment: 1).sent == 8)
        a.closeServerEnds()
        b.closeServerEnds()
        let receipt = Handover.receive(from: channel.receiver.rawValue, logger: quiet)
        #expect(receipt.chunks == 3)
        #expect(receipt.connections.count == 265)
        #expect(receipt.rejected == 0)
    }

    /// Not a connection: a UDP socket, a pipe, a listening socket, a TCP connection whose peer
    /// reset it. Each is closed and counted; the connections beside them are served; a peer that
    /// only half-closed (CLOSE_WAIT) is still served (what it sent is owed back).
    @Test func receivedDescriptorsThatAreNotConnectionsAreClosed() throws {
        let channel = try HandoverChannel()
        let conns = try Connections(3)
        let udp = socket(AF_INET, CEchoShims_SOCK_DGRAM | CEchoShims_SOCK_CLOEXEC, 0)
        var pipeFDs: [Int32] = [-1, -1]
        #expect(pipe(&pipeFDs) == 0)
        let (listening, listeningAddress) = try makeLoopbackListener()
        // conns 1: the peer resets (SO_LINGER 0); conns 2: the peer half-closes.
        var lingerOff = linger(l_onoff: 1, l_linger: 0)
        setsockopt(conns.clients[1].fd, SOL_SOCKET, SO_LINGER, &lingerOff, socklen_t(MemoryLayout<linger>.size))
        conns.clients.remove(at: 1)
        conns.clients[1].shutdownWrite()
        #expect(eventually { CEchoShims_tcp_state(conns.servers[1]) == 7 && CEchoShims_tcp_state(conns.servers[2]) == 8 })
        let fds = [conns.servers[0], udp, pipeFDs[0], listening, conns.servers[1], conns.servers[2]]
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        let (sent, _) = Handover.sendSegment(fds.map { HandoverItem(fd: $0, pending: none) }, over: channel.sender.rawValue, segment: 9)
        #expect(sent == 6)
        for fd in [udp, pipeFDs[0], listening] { close(fd) }
        conns.closeServerEnds()
        let receipt = Handover.receive(from: channel.receiver.rawValue, logger: quiet)
        #expect(receipt.rejected == 4)
        #expect(receipt.connections.count == 2)
        #expect(InheritedKind.of(receipt.connections[1].rawValue) == .connected)
        // The pipe's read end is gone (its write end reports an error), and so is the listener
        // (a connect is refused): closed, not kept.
        var pfd = pollfd(fd: pipeFDs[1], events: Int16(POLLOUT), revents: 0)
        #expect(poll(&pfd, 1, 0) == 1 && pfd.revents & Int16(POLLERR) != 0)
        close(pipeFDs[1])
        #expect(throws: SystemError.self) { _ = try TestClient(connectingTo: listeningAddress) }
        #expect(sawEnd(conns.clients[0]) == false)  // served: still open
    }

    /// The kinds, one by one, as a start logs them.
    @Test func inheritedKindNamesEachCase() throws {
        let (listening, listeningAddress) = try makeLoopbackListener()
        defer { close(listening) }
        #expect(InheritedKind.of(listening) == .listening)
        let udp = socket(AF_INET, CEchoShims_SOCK_DGRAM | CEchoShims_SOCK_CLOEXEC, 0)
        defer { close(udp) }
        #expect(InheritedKind.of(udp) == .notTCPStream)
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, CEchoShims_SOCK_STREAM, 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        #expect(InheritedKind.of(pair[0]) == .notTCPStream)
        let file = CEchoShims_memfd_create("x")
        defer { close(file) }
        #expect(InheritedKind.of(file) == .notASocket)
        let conns = try Connections(1)
        #expect(InheritedKind.of(conns.servers[0]) == .connected)
    }

    /// A chunk whose state file is cut short, full of garbage, for another segment, missing
    /// (not a memfd first), or with a record out of bounds: all its connections are closed,
    /// none is served with bytes it may have lost; the other chunks are served.
    @Test(arguments: ["truncated", "garbage", "other-segment", "no-state", "record-out-of-bounds", "too-long"])
    func unusableChunksAreClosed(_ flaw: String) throws {
        let channel = try HandoverChannel()
        let good = try Connections(2)
        let bad = try Connections(3)
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        #expect(Handover.sendSegment(good.servers.map { HandoverItem(fd: $0, pending: none) }, over: channel.sender.rawValue, segment: 1).sent == 2)
        let pending = patterned(100, seed: 5)
        var state = try stateFile(bad.servers, pending: pending, segment: 2)
        switch flaw {
        case "truncated":
            #expect(ftruncate(state.rawValue, 40) == 0)
        case "garbage":
            state = try memfd(patterned(Handover.stateHeaderSize + 3 * Handover.recordSize + 300, seed: 1))
        case "other-segment":
            state = try stateFile(bad.servers, pending: [], segment: 77)
        case "record-out-of-bounds":
            var offset = UInt64.max - 10
            #expect(pwrite(state.rawValue, &offset, 8, off_t(Handover.stateHeaderSize + Handover.recordSize)) == 8)
        case "too-long":
            #expect(ftruncate(state.rawValue, off_t(Handover.stateHeaderSize + 3 * Handover.recordSize + 3 * Handover.maxPendingBytes + 1)) == 0)
        default:
            break
        }
        // "no-state": a socket where the state memfd belongs.
        let first = flaw == "no-state" ? dup(bad.servers[0]) : state.rawValue
        sendRaw(channel.sender.rawValue, Handover.Message(kind: .chunk, segment: 2, first: 0, count: 3).encoded(), fds: [first] + bad.servers)
        if flaw == "no-state" { close(first) }
        state.close()
        good.closeServerEnds()
        bad.closeServerEnds()
        let receipt = Handover.receive(from: channel.receiver.rawValue, logger: quiet)
        #expect(receipt.connections.count == 2, "\(flaw)")
        #expect(receipt.rejected == 3, "\(flaw)")
        // The bad chunk's clients see their connection end (closed, never served).
        for client in bad.clients { #expect(sawEnd(client), "\(flaw)") }
    }

    /// Messages that are not of the format (bad magic, another version, the wrong length, a
    /// count that does not match the descriptors): their descriptors are closed.
    @Test(arguments: ["magic", "version", "length", "count"])
    func malformedMessagesCloseTheirDescriptors(_ flaw: String) throws {
        let channel = try HandoverChannel()
        let conns = try Connections(2)
        var payload = Handover.Message(kind: .chunk, segment: 4, first: 0, count: 1).encoded()
        switch flaw {
        case "magic": payload[0] ^= 0xFF
        case "version": payload[8] = 99
        case "length": payload.append(0)
        default: payload[28] = 3
        }
        sendRaw(channel.sender.rawValue, payload, fds: conns.servers)
        conns.closeServerEnds()
        let receipt = Handover.receive(from: channel.receiver.rawValue, logger: quiet)
        #expect(receipt.connections.isEmpty)
        #expect(receipt.rejected == 2, "\(flaw)")  // not even the first is taken for a state file
        for client in conns.clients { #expect(sawEnd(client), "\(flaw)") }
    }

    /// At start: the hand-over is taken and removed from the store; a stored name echod does
    /// not know (its prefix, another name) is closed and removed; a descriptor stored as the
    /// hand-over that is not a datagram socket is closed, never a listener; other names go on
    /// to the listener checks.
    @Test func startSortsPassedDescriptors() throws {
        let channel = try HandoverChannel()
        let conns = try Connections(2)
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        #expect(Handover.sendSegment(conns.servers.map { HandoverItem(fd: $0, pending: none) }, over: channel.sender.rawValue, segment: 1).sent == 2)
        conns.closeServerEnds()
        let (listener, _) = try makeLoopbackListener()
        let (fakeHandover, _) = try makeLoopbackListener()
        let unknown = socket(AF_INET, CEchoShims_SOCK_DGRAM | CEchoShims_SOCK_CLOEXEC, 0)
        let receiver = dup(channel.receiver.rawValue)
        let notifier = RecordingNotifier()
        let intake = RestartIntake.take(
            [
                PassedDescriptor(fd: listener, name: "echo"),
                PassedDescriptor(fd: receiver, name: Handover.storeName),
                PassedDescriptor(fd: fakeHandover, name: Handover.storeName),
                PassedDescriptor(fd: unknown, name: "echod-connections-v2"),
            ], notifier: notifier, logger: quiet)
        #expect(intake.listeners == [PassedDescriptor(fd: listener, name: "echo")])
        #expect(intake.inherited.count == 2)
        #expect(fcntl(receiver, F_GETFD) == -1)
        #expect(fcntl(fakeHandover, F_GETFD) == -1)
        #expect(fcntl(unknown, F_GETFD) == -1)
        #expect(notifier.sent == ["FDSTOREREMOVE=1\nFDNAME=echod-connections-v2", "FDSTOREREMOVE=1\nFDNAME=echod-handover"])
        close(listener)
    }

    /// The channel takes far more than the 19,000 connections a process holds here before the
    /// sender's buffer is full: a full channel is an error the sender sees (and then drains what
    /// is left), never a block.
    @Test func aFullChannelIsReportedNotBlocking() throws {
        let channel = try HandoverChannel()
        try Socket.setOption(channel.sender.rawValue, SOL_SOCKET, SO_SNDBUF, 4096, "setsockopt(SO_SNDBUF)")
        let devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(devnull) }
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        let items = [HandoverItem](repeating: HandoverItem(fd: devnull, pending: none), count: 253 * 40)
        let (sent, error) = Handover.sendSegment(items, over: channel.sender.rawValue, segment: 1)
        #expect(sent < items.count)
        #expect(sent % Handover.chunkSize == 0)
        #expect(error?.errno == EAGAIN)
    }
}

extension Array where Element == [UInt8] {
    /// Calls `body` with a buffer pointer to each element's bytes (valid only inside).
    func withPointers<R>(_ body: ([UnsafeRawBufferPointer]) throws -> R) rethrows -> R {
        var copies: [UnsafeMutableRawBufferPointer] = []
        defer { for c in copies { c.deallocate() } }
        for bytes in self {
            let c = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
            c.copyBytes(from: bytes)
            copies.append(c)
        }
        return try body(copies.map { UnsafeRawBufferPointer($0) })
    }
}
