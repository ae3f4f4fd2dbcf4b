// Deliberately wrong echo servers, run inside the test process on 127.0.0.1:0: one that flips a
// byte now and then, one that drops the connection in the middle of a message, one that never
// answers, one that sends more than the echo, one that closes cleanly before the echo is whole. One blocking thread per connection; `stop()` (or deinit) wakes and joins them all.
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
    var description: String { rawValue }

    /// Where the fault starts by default (stream offset), for the faults that have one.
    var defaultOffset: Int {
        switch self {
        case .flipByte: 3000
        case .dropMidMessage, .earlyClose: 5000
        case .stallOnce: 2000
        case .silent, .trailingGarbage: 0
        }
    }
}

final class FaultyServer: Sendable {
    let fault: Fault
    /// Stream offset at which the fault begins (`Fault.defaultOffset` unless given).
    let offset: Int
    let address: String
    private let listener: Int32
    private let connections = Mutex<[Int32]>([])
    private let threads = Mutex<[JoinableThread]>([])
    private let stopping = Atomic<Bool>(false)

    /// - Parameter offset: where the fault begins; a small one reaches the short streams of
    ///   `hold` (one 16-byte probe per connection).
    init(_ fault: Fault, offset: Int? = nil) throws {
        self.fault = fault
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
            if let t = try? JoinableThread(name: "faulty-conn", stackSize: 256 * 1024, { [self] in self.serve(fd) }) {
                threads.withLock { $0.append(t) }
            }
        }
    }

    private func serve(_ fd: Int32) {
        let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: 65536)
        defer { buffer.deallocate() }
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
            var count = n
            switch fault {
            case .trailingGarbage:
                break
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
    }
}
