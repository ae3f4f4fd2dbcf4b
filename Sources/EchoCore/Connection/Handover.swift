// SPDX-License-Identifier: Apache-2.0
// The restart hand-over: how the connections of a stopping echod reach the echod that systemd
// starts next, without one descriptor per connection in systemd's file descriptor store.
//
// systemd 252 compares every newly stored descriptor with each one already stored (kcmp), so
// storing N connections one by one costs PID 1 O(N^2) calls, and it passes their names back in
// one environment string capped at 128 KiB. Instead, the connections travel inside one socket:
//
//   * a channel: an AF_UNIX SOCK_DGRAM socketpair. Every process that holds the sending end can
//     contribute connections (the event model's workers, the thread model's control thread,
//     worker processes of a supervisor); the receiving end alone goes into the store, under
//     the name `Handover.storeName`. A datagram pair, not SEQPACKET: when the last sender
//     closes, a SEQPACKET end reports EPOLLHUP and systemd drops it from the store; a datagram
//     end keeps its queue and reports nothing. (The kernel's max_dgram_qlen does not apply to a
//     connected pair either; the bound is the sender's SO_SNDBUF: about 280 messages of 253
//     descriptors with the default 208 KiB, see `HandoverChannel`.)
//   * per contributor a segment, sent as chunks: each chunk is ONE datagram carrying a memfd
//     with the chunk's state (each connection's bytes that were read but not yet echoed, in
//     order) and up to 252 connections (SCM_MAX_FD is 253). A datagram arrives whole or not at
//     all, so a chunk cannot be half-delivered: when the channel is full the sender knows
//     exactly which connections went (whole chunks) and drains the rest itself.
//
// Messages and the memfd are in host byte order (both ends run on the same host) and start with
// a magic number and a format version; anything unexpected is logged and closed.
//
// The descriptors in flight are references the kernel holds: the sender closes its own copies
// and the connections stay open, their unread input queued in the kernel, until the successor
// receives them.
import CEchoShims
import Glibc
import Logging

/// Names, limits and the wire format of the restart hand-over.
public enum Handover {
    /// `FDNAME=` of the channel's receiving end in systemd's file descriptor store.
    public static let storeName = "echod-handover"
    /// Prefix of every name echod stores; a stored descriptor with this prefix and another name
    /// (another release's format) is logged, closed and removed from the store.
    public static let storeNamePrefix = "echod-"
    /// The format version in every message and state file.
    public static let version: UInt32 = 1
    /// "ECHODHND" as a little-endian integer: the first eight bytes of every message and memfd.
    static let magic: UInt64 = 0x444E_4844_4F48_4345
    /// Most descriptors in one message (the kernel's SCM_MAX_FD).
    static let maxDescriptors = Int(CEchoShims_SCM_MAX_FD)
    /// Most connections in one chunk: the memfd takes one descriptor.
    public static let chunkSize = maxDescriptors - 1
    /// Most pending bytes one connection may carry: one read of the event model's buffer.
    public static let maxPendingBytes = echoBufferSize
    /// Size of a message: magic, version, kind, segment, first index, count.
    static let messageSize = 32
    /// Size of the memfd's header: magic, version, reserved, segment, count, reserved.
    static let stateHeaderSize = 32
    /// Size of one connection's record in the memfd: offset and length of its pending bytes.
    static let recordSize = 16

    /// What a message is (one kind so far; the field leaves room for more).
    enum Kind: UInt32 {
        /// Connections `first..<first+count` of a segment: descriptors [state memfd, connections...].
        case chunk = 1
    }

    /// A message's fixed header.
    struct Message: Equatable {
        var kind: Kind
        var segment: UInt64
        var first: UInt32
        var count: UInt32

        func encoded() -> [UInt8] {
            var out = [UInt8](repeating: 0, count: Handover.messageSize)
            out.withUnsafeMutableBytes { p in
                p.storeBytes(of: Handover.magic, toByteOffset: 0, as: UInt64.self)
                p.storeBytes(of: Handover.version, toByteOffset: 8, as: UInt32.self)
                p.storeBytes(of: kind.rawValue, toByteOffset: 12, as: UInt32.self)
                p.storeBytes(of: segment, toByteOffset: 16, as: UInt64.self)
                p.storeBytes(of: first, toByteOffset: 24, as: UInt32.self)
                p.storeBytes(of: count, toByteOffset: 28, as: UInt32.self)
            }
            return out
        }

        /// - Returns: the header, or why the bytes are not one.
        static func decode(_ bytes: UnsafeRawBufferPointer) -> Result<Message, HandoverProblem> {
            guard bytes.count == Handover.messageSize else { return .failure(.malformed("message of \(bytes.count) bytes")) }
            guard bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self) == Handover.magic else {
                return .failure(.malformed("bad magic number"))
            }
            let version = bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
            guard version == Handover.version else { return .failure(.malformed("format version \(version)")) }
            guard let kind = Kind(rawValue: bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self)) else {
                return .failure(.malformed("unknown message kind"))
            }
            return .success(
                Message(
                    kind: kind, segment: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self),
                    first: bytes.loadUnaligned(fromByteOffset: 24, as: UInt32.self),
                    count: bytes.loadUnaligned(fromByteOffset: 28, as: UInt32.self)))
        }
    }

    /// A segment identifier unique among the contributors of one hand-over: the process id and
    /// the contributor's index inside it (an event worker).
    public static func segmentID(index: Int) -> UInt64 {
        UInt64(UInt32(bitPattern: getpid())) << 32 | UInt64(UInt32(truncatingIfNeeded: index))
    }
}

/// Something wrong in a hand-over, for the log.
public enum HandoverProblem: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case badState(String)

    public var description: String {
        switch self {
        case .malformed(let s): return "malformed message: \(s)"
        case .badState(let s): return "bad state file: \(s)"
        }
    }
}

/// One connection to hand over: its descriptor (still owned by the sender) and the bytes it
/// read but has not echoed yet (borrowed until `Handover.sendSegment` returns).
public struct HandoverItem {
    public var fd: Int32
    public var pending: UnsafeRawBufferPointer

    public init(fd: Int32, pending: UnsafeRawBufferPointer) {
        self.fd = fd
        self.pending = pending
    }
}

/// The channel of one hand-over: a datagram socketpair. The daemon keeps both ends; the models'
/// contributors send on `sender` (concurrently: each datagram is atomic); `receiver` goes into
/// the store.
public final class HandoverChannel: Sendable {
    public let sender: FileDescriptor
    public let receiver: FileDescriptor

    /// - Throws: `SystemError` if the socketpair cannot be made.
    public init() throws(SystemError) {
        var pair: [Int32] = [-1, -1]
        try syscall("socketpair(AF_UNIX, SOCK_DGRAM)") {
            socketpair(AF_UNIX, CEchoShims_SOCK_DGRAM | CEchoShims_SOCK_CLOEXEC, 0, &pair)
        }
        sender = FileDescriptor(owning: pair[0])
        receiver = FileDescriptor(owning: pair[1])
        // The queue's bound is the sender's send buffer; take what the host allows
        // (net.core.wmem_max; the kernel doubles it). Failure leaves the default, ~70,000
        // connections.
        try? Socket.setOption(pair[0], SOL_SOCKET, SO_SNDBUF, Int32.max / 2, "setsockopt(SO_SNDBUF)")
    }
}

extension Handover {
    /// Sends one segment as chunks (one datagram each: its state memfd and up to `chunkSize`
    /// connections). Does not close anything of the caller's.
    ///
    /// - Parameters:
    ///   - items: the connections, in order.
    ///   - sender: the channel's sending end.
    ///   - segment: this contributor's `segmentID`.
    /// - Returns: how many of `items` (a prefix, whole chunks) were handed over, and the error
    ///   that stopped the rest (the channel full, too many descriptors in flight). The caller
    ///   keeps serving (or drains) the rest, and closes its own copies of those handed over.
    public static func sendSegment(_ items: [HandoverItem], over sender: Int32, segment: UInt64) -> (
        sent: Int, error: SystemError?
    ) {
        var sent = 0
        var fds: [Int32] = []
        fds.reserveCapacity(maxDescriptors)
        while sent < items.count {
            let end = min(items.count, sent + chunkSize)
            let state: FileDescriptor
            do {
                state = try writeState(items[sent..<end], segment: segment)
            } catch {
                return (sent, error)
            }
            fds.removeAll(keepingCapacity: true)
            fds.append(state.rawValue)
            for i in sent..<end { fds.append(items[i].fd) }
            let header = Message(kind: .chunk, segment: segment, first: UInt32(sent), count: UInt32(end - sent)).encoded()
            let rc = header.withUnsafeBytes { h in
                fds.withUnsafeBufferPointer { CEchoShims_send_fds(sender, h.baseAddress, h.count, $0.baseAddress, Int32($0.count)) }
            }
            let err = errno
            state.close()
            if rc < 0 { return (sent, SystemError("sendmsg(hand-over)", errno: err)) }
            sent = end
        }
        return (sent, nil)
    }

    /// The memfd of a chunk: header, one record per connection, then the pending bytes.
    static func writeState(_ items: ArraySlice<HandoverItem>, segment: UInt64) throws(SystemError) -> FileDescriptor {
        let count = items.count
        var size = stateHeaderSize + count * recordSize
        let dataStart = size
        for item in items { size += item.pending.count }
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { p in
            p.storeBytes(of: magic, toByteOffset: 0, as: UInt64.self)
            p.storeBytes(of: version, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: segment, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: UInt32(count), toByteOffset: 24, as: UInt32.self)
            var offset = dataStart
            for (i, item) in items.enumerated() {
                let record = stateHeaderSize + i * recordSize
                p.storeBytes(of: UInt64(offset), toByteOffset: record, as: UInt64.self)
                p.storeBytes(of: UInt64(item.pending.count), toByteOffset: record + 8, as: UInt64.self)
                if item.pending.count > 0 {
                    (p.baseAddress! + offset).copyMemory(from: item.pending.baseAddress!, byteCount: item.pending.count)
                }
                offset += item.pending.count
            }
        }
        let fd = FileDescriptor(owning: try syscall("memfd_create") { CEchoShims_memfd_create("echod-handover-state") })
        var written = 0
        while written < size {
            let n = try bytes.withUnsafeBytes { p in
                Result { () throws(SystemError) in
                    try syscall("write(memfd)") { pwrite(fd.rawValue, p.baseAddress! + written, size - written, off_t(written)) }
                }
            }.get()
            written += n
        }
        return fd
    }

    /// Reads and checks a chunk's state file.
    /// - Returns: each connection's pending bytes, in order.
    static func readState(_ fd: Int32, segment: UInt64, count: Int) -> Result<[[UInt8]], HandoverProblem> {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            return .failure(.badState("not a regular file"))
        }
        let size = Int(st.st_size)
        let least = stateHeaderSize + count * recordSize
        guard size >= least else { return .failure(.badState("\(size) bytes, at least \(least) expected")) }
        guard size <= least + count * maxPendingBytes else {
            return .failure(.badState("\(size) bytes, more than \(count) connections may carry"))
        }
        var bytes = [UInt8](repeating: 0, count: size)
        var got = 0
        while got < size {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, size - got, off_t(got)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return .failure(.badState("short read at \(got) of \(size) bytes")) }
            got += n
        }
        return bytes.withUnsafeBytes { p -> Result<[[UInt8]], HandoverProblem> in
            guard p.loadUnaligned(fromByteOffset: 0, as: UInt64.self) == magic else { return .failure(.badState("bad magic number")) }
            let v = p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
            guard v == version else { return .failure(.badState("format version \(v)")) }
            guard p.loadUnaligned(fromByteOffset: 16, as: UInt64.self) == segment else {
                return .failure(.badState("for another segment"))
            }
            let n = Int(p.loadUnaligned(fromByteOffset: 24, as: UInt32.self))
            guard n == count else { return .failure(.badState("\(n) connections, the message says \(count)")) }
            var pending: [[UInt8]] = []
            pending.reserveCapacity(count)
            for i in 0..<count {
                let record = stateHeaderSize + i * recordSize
                let offset = p.loadUnaligned(fromByteOffset: record, as: UInt64.self)
                let length = p.loadUnaligned(fromByteOffset: record + 8, as: UInt64.self)
                // No sum of two untrusted values: offset + length could overflow.
                guard offset >= UInt64(least), length <= UInt64(maxPendingBytes), offset <= UInt64(size) - length else {
                    return .failure(.badState("record \(i) out of bounds"))
                }
                pending.append(Array(p[Int(offset)..<Int(offset + length)]))
            }
            return .success(pending)
        }
    }
}

/// A connection taken over from the previous echod: its descriptor (owned until a model takes
/// it) and the bytes to echo before anything else.
public final class InheritedConnection: @unchecked Sendable {
    // @unchecked: taken once, by the thread that serves it.
    private var fd: Int32
    /// Bytes the previous echod had read and not yet echoed: they go out first.
    public let pending: [UInt8]

    public init(owning fd: Int32, pending: [UInt8]) {
        self.fd = fd
        self.pending = pending
    }

    /// The descriptor, for peeking without taking it.
    public var rawValue: Int32 { fd }

    /// Takes ownership of the descriptor.
    public func take() -> FileDescriptor {
        precondition(fd >= 0, "inherited connection taken twice")
        defer { fd = -1 }
        return FileDescriptor(owning: fd)
    }

    deinit {
        if fd >= 0 { closeNoRetry(fd) }
    }
}

/// What a received descriptor turned out to be, when it is not a connection to serve.
public enum InheritedKind: Equatable, CustomStringConvertible {
    case connected
    case notASocket
    case notTCPStream
    case listening
    case closed(tcpState: Int32)

    public var description: String {
        switch self {
        case .connected: return "a connected TCP socket"
        case .notASocket: return "not a socket"
        case .notTCPStream: return "not a TCP stream socket"
        case .listening: return "a listening socket"
        case .closed(let s): return "a TCP socket whose connection is over (state \(s))"
        }
    }

    /// Checks a received descriptor: a TCP stream socket, connected (ESTABLISHED), or whose
    /// peer has only shut its sending side (CLOSE_WAIT: what it sent is still to be echoed).
    public static func of(_ fd: Int32) -> InheritedKind {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return .notASocket }
        guard let type = try? Socket.option(fd, SOL_SOCKET, SO_TYPE, "getsockopt(SO_TYPE)"),
            type == CEchoShims_SOCK_STREAM,
            let domain = try? Socket.option(fd, SOL_SOCKET, SO_DOMAIN, "getsockopt(SO_DOMAIN)"),
            domain == AF_INET || domain == AF_INET6
        else { return .notTCPStream }
        if let listening = try? Socket.option(fd, SOL_SOCKET, SO_ACCEPTCONN, "getsockopt(SO_ACCEPTCONN)"),
            listening != 0
        {
            return .listening
        }
        let state = CEchoShims_tcp_state(fd)
        // include/net/tcp_states.h: TCP_ESTABLISHED 1, TCP_CLOSE_WAIT 8.
        guard state == 1 || state == 8 else { return .closed(tcpState: state) }
        return .connected
    }
}

/// The outcome of receiving a hand-over.
public struct HandoverReceipt {
    /// Connections to serve, checked.
    public var connections: [InheritedConnection] = []
    /// Descriptors closed: not connections, or from a malformed message.
    public var rejected = 0
    /// Chunks received whole and well-formed.
    public var chunks = 0
}

extension Handover {
    /// Drains the channel's receiving end (`EAGAIN` ends it: every sender has exited before the
    /// successor starts), checks every message and descriptor, and returns the connections to
    /// serve. Whatever is not right is logged and closed, never served.
    public static func receive(from receiver: Int32, logger: Logger) -> HandoverReceipt {
        var receipt = HandoverReceipt()
        var payload = [UInt8](repeating: 0, count: messageSize + 1)
        var fds = [Int32](repeating: -1, count: maxDescriptors)
        func reject(_ fd: Int32, _ why: String) {
            logger.debug("hand-over: closing a descriptor", metadata: ["fd": "\(fd)", "reason": "\(why)"])
            closeNoRetry(fd)
            receipt.rejected += 1
        }
        func rejectChunk(_ fds: ArraySlice<Int32>, _ why: String) {
            logger.error(
                "hand-over: a message is not usable; closing its descriptors",
                metadata: ["descriptors": "\(fds.count)", "reason": "\(why)"])
            for fd in fds { reject(fd, why) }
        }
        while true {
            var nfds: Int32 = 0
            var flags: Int32 = 0
            let n = payload.withUnsafeMutableBytes { p in
                fds.withUnsafeMutableBufferPointer { f in
                    CEchoShims_recv_fds(receiver, p.baseAddress, p.count, f.baseAddress, Int32(f.count), &nfds, &flags)
                }
            }
            if n < 0 {
                let err = errno
                if err != EAGAIN && err != EWOULDBLOCK {
                    logger.error("hand-over: cannot read the channel", metadata: ["error": "\(SystemError("recvmsg", errno: err))"])
                }
                break
            }
            let received = fds[0..<Int(nfds)]
            let decoded = payload.withUnsafeBytes { Message.decode(UnsafeRawBufferPointer(rebasing: $0[0..<min(n, payload.count)])) }
            guard flags & Int32(MSG_CTRUNC) == 0 else {
                rejectChunk(received, "descriptors truncated")
                continue
            }
            guard case .success(let message) = decoded else {
                rejectChunk(received, "\(decoded)")
                continue
            }
            let count = Int(message.count)
            guard received.count == count + 1 else {
                rejectChunk(received, "\(received.count) descriptors for \(count) connections and their state")
                continue
            }
            let state = received.first!
            let pending = readState(state, segment: message.segment, count: count)
            closeNoRetry(state)
            guard case .success(let bytes) = pending else {
                if case .failure(let problem) = pending { rejectChunk(received.dropFirst(), "\(problem)") }
                continue
            }
            receipt.chunks += 1
            for (i, fd) in received.dropFirst().enumerated() {
                let kind = InheritedKind.of(fd)
                guard kind == .connected else {
                    logger.warning("hand-over: closing a descriptor that is not a connection", metadata: ["reason": "\(kind)"])
                    reject(fd, "\(kind)")
                    continue
                }
                receipt.connections.append(InheritedConnection(owning: fd, pending: bytes[i]))
            }
        }
        return receipt
    }
}
