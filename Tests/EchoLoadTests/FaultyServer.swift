// SPDX-License-Identifier: Apache-2.0
// Deliberately wrong echo servers, run inside the test process on 127.0.0.1:0: one that flips a
// byte now and then, one that drops the connection in the middle of a message, one that never
// answers, one that sends more than the echo, one that closes cleanly before the echo is whole,
// one that replays old data; and a correct one (`none`). One blocking thread per connection;
// `stop()` (or deinit) wakes and joins them all. Every server keeps a log of its accepts, closes
// and arrivals (`events`), the server's own view for the tests of barriers and schedules.
import CEchoShims
import EchoCore
import Glibc
import Synchronization

enum Fault: String, CaseIterable, Sendable, CustomStringConvertible {
    /// Echoes, but every 7919th byte (from offset 3000) comes back with its bits flipped.
    case flipByte
    /// Echoes the first 5000 bytes, then sends back half of the next read and closes.
    case dropMidMessage
    /// Reads and discards; never writes a byte.
    case silent
    /// A correct echo that stalls for 300 ms once per connection, after 2000 bytes (not a fault:
    /// it shows up as latency in an open-loop run).
    case stallOnce
    /// Echoes correctly, then answers the client's half-close with bytes it never sent.
    case trailingGarbage
    /// Echoes the first 5000 bytes, then closes cleanly (FIN) with the rest unechoed.
    case earlyClose
    /// From the offset (and `replayDistance`) on, sends back what it received `replayDistance`
    /// bytes earlier instead of what it just received (a server replaying old data).
    case replayOld
    /// A correct echo (the log is what the test wants).
    case none
    var description: String { rawValue }

    /// Where the fault starts by default (stream offset), for the faults that have one.
    var defaultOffset: Int {
        switch self {
        case .flipByte: 3000
        case .dropMidMessage, .earlyClose: 5000
        case .stallOnce: 2000
        case .silent, .trailingGarbage, .none, .replayOld: 0
        }
    }
}

/// One thing the server saw, at CLOCK_MONOTONIC nanoseconds `time`.
struct ServerEvent: Sendable {
    enum Kind: Sendable, Equatable { case accept, close, arrival }
    var time: Int64
    var kind: Kind
    /// Which connection (accept order).
    var connection: Int
    /// arrival: bytes received.
    var bytes: Int = 0
}

final class FaultyServer: Sendable {
    let fault: Fault
    /// `replayOld`: how far back the replayed bytes come from.
    let replayDistance: Int
    private let log = Locked<[ServerEvent]>([])
    private let accepted = Atomic<Int>(0)
    /// Stream offset at which the fault begins (`Fault.defaultOffset` unless given).
    let offset: Int
    let address: String
    private let listener: Int32
    private let connections = Locked<[Int32]>([])
    private let threads = Locked<[JoinableThread]>([])
    private let stopping = Atomic<Bool>(false)

    /// - Parameter offset: where the fault begins; a small one reaches the short streams of
    ///   `hold` (one 16-byte probe per connection).
    init(_ fault: Fault, offset: Int? = nil, replayDistance: Int = 65_521) throws {
        self.fault = fault
        self.replayDistance = replayDistance
        self.offset = offset ?? fault.defaultOffset
        let fd = try Socket.listen(on: try SocketAddress(parsing: "127.0.0.1:0"), backlog: 1024)
        guard let local = try Socket.localAddress(fd.rawValue) else { throw TestError.failed("getsockname") }
        address = local.description
        listener = fd.release()
        // Blocking accepts on the accept thread.
        let flags = fcntl(listener, F_GETFL)
        _ = fcntl(listener, F_SETFL, flags & ~O_NONBLOCK)
        let acceptor = try JoinableThread(name: "faulty-accept") { [self] in self.acceptLoop() }
        threads.withLock { $0.append(acceptor) }
    }

    deinit { stop() }

    /// Everything logged so far, in time order.
    var events: [ServerEvent] { log.withLock { $0 }.sorted { $0.time < $1.time } }

    /// The most connections open at once (accepted and not yet closed by the peer).
    var maxOpen: Int {
        var open = 0
        var most = 0
        for e in events where e.kind != .arrival {
            open += e.kind == .accept ? 1 : -1
            most = max(most, open)
        }
        return most
    }

    private func record(_ kind: ServerEvent.Kind, _ connection: Int, bytes: Int = 0) {
        let e = ServerEvent(time: monotonicNanoseconds(), kind: kind, connection: connection, bytes: bytes)
        log.withLock { $0.append(e) }
    }

    func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Glibc.shutdown(listener, Int32(SHUT_RDWR))  // wakes accept(2) with EINVAL
        connections.withLock { for fd in $0 { Glibc.shutdown(fd, Int32(SHUT_RDWR)) } }
        while let t = threads.withLock({ $0.popLast() }) { t.join() }
        connections.withLock { for fd in $0 { closeNoRetry(fd) }; $0.removeAll() }
        closeNoRetry(listener)
    }

    private func acceptLoop() {
        while !stopping.load(ordering: .acquiring) {
            let fd = CEchoShims_accept4(listener, nil, nil, CEchoShims_SOCK_CLOEXEC)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            let registered = connections.withLock { list -> Bool in
                guard !stopping.load(ordering: .acquiring) else { return false }
                list.append(fd)
                return true
            }
            guard registered else { closeNoRetry(fd); return }
            let id = accepted.add(1, ordering: .relaxed).oldValue
            record(.accept, id)
            if let t = try? JoinableThread(name: "faulty-conn", stackSize: 256 * 1024, { [self] in
                self.serve(fd, id)
                self.record(.close, id)
            }) {
                threads.withLock { $0.append(t) }
            }
        }
    }

    private func serve(_ fd: Int32, _ id: Int) {
        let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: 65536)
        defer { buffer.deallocate() }
        // replayOld: everything received so far (the tests' streams are short).
        var history: [UInt8] = []
        let from = self.offset
        var offset = 0
        var stalled = false
        while true {
            let n = Glibc.recv(fd, buffer, 65536, 0)
            if n < 0 && errno == EINTR { continue }
            if n == 0 && fault == .trailingGarbage {
                _ = Glibc.send(fd, "GARBAGE", 7, Int32(MSG_NOSIGNAL))
            }
            if n <= 0 { break }
            record(.arrival, id, bytes: n)
            var count = n
            switch fault {
            case .trailingGarbage, .none:
                break
            case .replayOld:
                history.append(contentsOf: UnsafeBufferPointer(start: buffer, count: n))
                for i in 0..<n where offset + i >= from && offset + i >= replayDistance {
                    buffer[i] = history[offset + i - replayDistance]
                }
            case .silent:
                continue
            case .stallOnce:
                if !stalled && offset >= from {
                    stalled = true
                    usleep(300_000)
                }
            case .flipByte:
                for i in 0..<n where (offset + i) >= from && (offset + i) % 7919 == from % 7919 { buffer[i] ^= 0xFF }
            case .earlyClose:
                if offset + n > from {
                    count = from - offset
                    var sent = 0
                    while sent < count {
                        let w = Glibc.send(fd, buffer + sent, count - sent, Int32(MSG_NOSIGNAL))
                        if w < 0 && errno == EINTR { continue }
                        if w <= 0 { break }
                        sent += w
                    }
                    Glibc.shutdown(fd, Int32(SHUT_WR))
                    return
                }
            case .dropMidMessage:
                if offset >= from {
                    count = max(1, n / 2)
                    _ = Glibc.send(fd, buffer, count, Int32(MSG_NOSIGNAL))
                    Glibc.shutdown(fd, Int32(SHUT_RDWR))
                    return
                }
            }
            offset += n
            var sent = 0
            while sent < count {
                let w = Glibc.send(fd, buffer + sent, count - sent, Int32(MSG_NOSIGNAL))
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { return }
                sent += w
            }
        }
        // The correct server answers the client's half-close with its own, as echod does.
        if fault == .none { Glibc.shutdown(fd, Int32(SHUT_WR)) }
    }
}
