// SPDX-License-Identifier: Apache-2.0
// The UDP echo (RFC 862's other half), made safe to leave on.
//
// UDP echo is the classic reflection vector (CERT CA-1996-01): a spoofed datagram "from" another
// echo or chargen service makes two servers bounce packets at each other for ever, and a spoofed
// victim address turns the port into free bandwidth against it. So, on by default and not
// switchable off:
// - datagrams from the source ports of services that answer datagrams (`reflectorPorts`) and
//   from echod's own listening ports (a second echod on the same port elsewhere) are dropped;
// - a reply is the request's own bytes, never more (no amplification), and a datagram that did
//   not fit the buffer (MSG_TRUNC) is dropped, never echoed cut;
// - each source gets at most `[UDP] RatePerSource=` datagrams a second (a token bucket per
//   source in a `SourceTable` of its own, IPv6 keyed by `SourcePrefixIPv6=`);
// - what echod sends is capped across every socket, thread and process (`[UDP] MaxBytesPerSecond=`,
//   a token bucket on bytes in shared memory);
// - a reply the socket cannot take at once (EAGAIN, ENOBUFS) is dropped, never queued.
// Every drop is counted by reason (STATUS=, the metrics file) and logged at most once a second
// per engine.
//
// The echo path: one `recvmmsg(2)` takes up to `batchSize` datagrams into buffers allocated once
// per engine, the filters keep or drop each in place, and one `sendmmsg(2)` sends the kept ones
// back from the same buffers to their sources. Nothing is allocated per datagram.
//
// Who runs an engine: each event-model worker (the UDP sockets are in its epoll set with
// EPOLLEXCLUSIVE, like the listeners); in the thread model, one UDP thread (`DatagramThread`);
// in the fork model, the parent's control loop itself, which must stay single-threaded for
// fork(2) to be safe (see ForkModel.swift), so never a thread there.
import CEchoShims
import Glibc
import Logging
import Synchronization

/// Why a datagram was not echoed.
public enum DatagramDrop: Int, CaseIterable, Sendable {
    /// From the source port of a service that answers datagrams (`DatagramPolicy.reflectorPorts`).
    case reflectorPort
    /// From one of echod's own listening ports.
    case ownPort
    /// Larger than the buffer (`maximumDatagram`): MSG_TRUNC.
    case truncated
    /// Over its source's `[UDP] RatePerSource=` bucket (or the per-source table had no room).
    case perSource
    /// Over `[UDP] MaxBytesPerSecond=`.
    case outputCap
    /// The socket could not take the reply at once (EAGAIN, ENOBUFS).
    case busy
    /// sendmmsg failed otherwise (EPERM from a firewall, ENETUNREACH, ...).
    case sendError

    /// The name in `STATUS=` and in the metrics' `reason` label.
    public var name: String {
        switch self {
        case .reflectorPort: return "reflector-port"
        case .ownPort: return "own-port"
        case .truncated: return "truncated"
        case .perSource: return "per-source"
        case .outputCap: return "cap"
        case .busy: return "busy"
        case .sendError: return "error"
        }
    }
}

/// The UDP echo's process-wide state: its totals and the output cap, in one MAP_SHARED page so
/// that worker processes forked from echod share them.
public final class DatagramShared: Sendable {
    /// This process's (and its children's) UDP state.
    public static let shared = DatagramShared()

    // Word offsets in the page.
    private static let rateWord = 0  // MaxBytesPerSecond=, 0 = no cap
    private static let tatWord = 1  // the cap's theoretical arrival time (ns, CLOCK_MONOTONIC)
    private static let servingWord = 2  // 1 once a UDP socket is served
    private static let intervalWord = 3  // RatePerSource=: ns per datagram, 0 = no limit
    private static let toleranceWord = 4  // its bucket's tolerance (see TokenBucket)
    private static let receivedWord = 8
    private static let echoedWord = 9
    private static let bytesWord = 10
    private static let dropsWord = 16

    private nonisolated(unsafe) let page: UnsafeMutablePointer<UInt64>

    private init() {
        let mapped = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        // Without the mapping (ENOMEM at start), private memory: only sharing with forked
        // processes is lost.
        if let mapped, mapped != MAP_FAILED {
            page = mapped.bindMemory(to: UInt64.self, capacity: 512)
        } else {
            page = .allocate(capacity: 512)
        }
        page.initialize(repeating: 0, count: 512)
        page[Self.rateWord] = Configuration.defaultUDPMaxBytesPerSecond
    }

    /// Takes `[UDP] MaxBytesPerSecond=` (at start and on reload).
    /// Takes `[UDP] RatePerSource=` and `BurstPerSource=` too.
    public func update(from configuration: Configuration) {
        CEchoShims_atomic_store_u64(page + Self.rateWord, configuration.udpMaxBytesPerSecond ?? 0)
        var interval: Int64 = 0
        var tolerance: Int64 = 0
        if let millis = configuration.udpRatePerSource {
            let bucket = TokenBucket(
                millisPerSecond: millis, burst: configuration.udpBurstPerSource ?? max(1, millis / 1000))
            (interval, tolerance) = (bucket.interval, bucket.tolerance)
        }
        // Tolerance first: a reader between the two stores sees the old interval with it, a
        // bucket that existed, never a new interval with a stale tolerance of another bucket
        // for long.
        CEchoShims_atomic_store_u64(page + Self.toleranceWord, UInt64(bitPattern: tolerance))
        CEchoShims_atomic_store_u64(page + Self.intervalWord, UInt64(bitPattern: interval))
    }

    /// The per-source datagram bucket in force, or nil for none.
    var perSourceBucket: TokenBucket? {
        let interval = Int64(bitPattern: CEchoShims_atomic_load_u64(page + Self.intervalWord))
        guard interval > 0 else { return nil }
        return TokenBucket(
            interval: interval, tolerance: Int64(bitPattern: CEchoShims_atomic_load_u64(page + Self.toleranceWord)))
    }

    /// Whether any UDP socket is served (the STATUS= suffix and the metrics appear only then).
    public var isServing: Bool {
        get { CEchoShims_atomic_load_u64(page + Self.servingWord) != 0 }
        set { CEchoShims_atomic_store_u64(page + Self.servingWord, newValue ? 1 : 0) }
    }

    /// Datagrams received.
    public var received: UInt64 { CEchoShims_atomic_load_u64(page + Self.receivedWord) }
    /// Datagrams echoed.
    public var echoed: UInt64 { CEchoShims_atomic_load_u64(page + Self.echoedWord) }
    /// Bytes echoed over UDP.
    public var bytesEchoed: UInt64 { CEchoShims_atomic_load_u64(page + Self.bytesWord) }
    /// Datagrams dropped for `reason`.
    public func dropped(_ reason: DatagramDrop) -> UInt64 {
        CEchoShims_atomic_load_u64(page + Self.dropsWord + reason.rawValue)
    }

    /// Adds an engine's counts since its last publication.
    func add(received: UInt64, echoed: UInt64, bytes: UInt64, drops: UnsafePointer<UInt64>) {
        if received != 0 { CEchoShims_atomic_add_u64(page + Self.receivedWord, received) }
        if echoed != 0 { CEchoShims_atomic_add_u64(page + Self.echoedWord, echoed) }
        if bytes != 0 { CEchoShims_atomic_add_u64(page + Self.bytesWord, bytes) }
        for i in 0..<DatagramDrop.allCases.count where drops[i] != 0 {
            CEchoShims_atomic_add_u64(page + Self.dropsWord + i, drops[i])
        }
    }

    /// `, udp: R received, E echoed (1.2 KiB), dropped: 0 reflector-port, …` for `STATUS=`, or "" when no UDP socket is served.
    public var statusSuffix: String {
        guard isServing else { return "" }
        let drops = DatagramDrop.allCases.map { "\(dropped($0)) \($0.name)" }.joined(separator: ", ")
        return ", udp: \(received) received, \(echoed) echoed (\(formatBytes(Double(bytesEchoed)))), dropped: \(drops)"
    }

    /// Takes up to `wanted` bytes from the output cap at `now` (CLOCK_MONOTONIC ns).
    ///
    /// The cap is a token bucket on bytes holding one second's worth (and at least one largest
    /// datagram), kept as its theoretical arrival time (GCRA), so that one compare-and-swap on a
    /// shared word takes a whole batch's bytes for every thread and process at once.
    /// - Returns: the bytes granted, `wanted` or fewer; `wanted` when there is no cap.
    func takeOutput(_ wanted: Int, now: Int64) -> Int {
        let rate = CEchoShims_atomic_load_u64(page + Self.rateWord)
        if rate == 0 || wanted == 0 { return wanted }
        let nanosPerByte = 1e9 / Double(rate)
        let burst = max(1e9, Double(DatagramEcho.maximumDatagram) * nanosPerByte)
        var expected = CEchoShims_atomic_load_u64(page + Self.tatWord)
        while true {
            let tat = max(Int64(bitPattern: expected), now)
            let room = Double(now) + burst - Double(tat)
            let granted = min(wanted, room > 0 ? Int(room / nanosPerByte) : 0)
            if granted == 0 { return 0 }
            let next = tat + Int64((Double(granted) * nanosPerByte).rounded(.up))
            if CEchoShims_atomic_cas_u64(page + Self.tatWord, &expected, UInt64(bitPattern: next)) != 0 {
                return granted
            }
        }
    }

    /// Gives back bytes taken by `takeOutput` and not sent.
    func returnOutput(_ bytes: Int) {
        let rate = CEchoShims_atomic_load_u64(page + Self.rateWord)
        guard rate != 0, bytes > 0 else { return }
        let back = UInt64((Double(bytes) * 1e9 / Double(rate)).rounded(.down))
        var expected = CEchoShims_atomic_load_u64(page + Self.tatWord)
        while CEchoShims_atomic_cas_u64(page + Self.tatWord, &expected, expected &- back) == 0 {}
    }
}

/// Which source ports are refused, built once at start (echod's own ports are known only then).
public final class DatagramPolicy: Sendable {
    /// Source ports of services that answer a datagram with one (or several), so that a
    /// datagram spoofed from them would start an endless exchange or amplify an attack:
    /// 0 (no legitimate sender uses it; a spoofing tell), 7 echo, 13 daytime, 17 qotd, 19 chargen,
    /// 37 time, 53 DNS, 69 TFTP (answers errors to anyone), 111 portmapper, 123 NTP,
    /// 137/138 NetBIOS name and datagram, 161/162 SNMP and its traps, 389 CLDAP, 520 RIP,
    /// 1900 SSDP, 3702 WS-Discovery, 5353 mDNS, 11211 memcached: the amplifiers in US-CERT
    /// TA14-017A and the services of CA-1996-01.
    public static let reflectorPorts: [UInt16] = [
        0, 7, 13, 17, 19, 37, 53, 69, 111, 123, 137, 138, 161, 162, 389, 520, 1900, 3702, 5353, 11211,
    ]

    /// One byte per port: 0 allowed, else 1 + the `DatagramDrop` raw value.
    private nonisolated(unsafe) let table: UnsafeMutablePointer<UInt8>

    /// The UDP echo's own per-source table (the hostile-network module's `SourceTable`, used
    /// for rates only, through `takeToken`): one bounded table in a shared mapping, IPv6 sources
    /// keyed by `SourcePrefixIPv6=` like the connection limits'. Nil: no per-source bucket.
    public let sources: SourceTable?

    /// Entries of the UDP per-source table: 2 MiB of address space, touched as sources arrive.
    public static let sourceTableCapacity = 1 << 16

    /// - Parameters:
    ///   - ownPorts: echod's listening ports (stream and datagram).
    ///   - sources: the UDP per-source table.
    public init(ownPorts: [UInt16], sources: SourceTable? = nil) {
        self.sources = sources
        table = .allocate(capacity: 65536)
        table.initialize(repeating: 0, count: 65536)
        for port in ownPorts { table[Int(port)] = UInt8(1 + DatagramDrop.ownPort.rawValue) }
        for port in Self.reflectorPorts { table[Int(port)] = UInt8(1 + DatagramDrop.reflectorPort.rawValue) }
    }

    deinit { table.deallocate() }

    /// The reason to drop a datagram from `port`, if any.
    @inline(__always)
    func refusal(sourcePort port: UInt16) -> DatagramDrop? {
        let code = table[Int(port)]
        return code == 0 ? nil : DatagramDrop(rawValue: Int(code) - 1)
    }
}

/// One thread's UDP echo: its buffers and message vectors, allocated once, and its counts.
/// Used by one thread only.
final class DatagramEcho {
    /// Datagrams taken per `recvmmsg(2)`.
    static let batchSize = 32
    /// The largest datagram echoed: the most UDP carries over IPv4 (65,535 less the IP and UDP
    /// headers). Larger ones (IPv6 allows 65,527) arrive truncated and are dropped.
    static let maximumDatagram = 65_507
    /// Rounds of `recvmmsg` per wake-up before the thread's other work gets a turn.
    static let roundsPerWakeup = 4

    private let policy: DatagramPolicy
    private var logger: Logger
    private var warning = RateLimitedWarning()
    private let slotStride = 64 * 1024
    private let buffers: UnsafeMutableRawPointer
    private let receiveVectors: UnsafeMutablePointer<iovec>
    private let sendVectors: UnsafeMutablePointer<iovec>
    private let addresses: UnsafeMutablePointer<sockaddr_in6>
    private let received: UnsafeMutablePointer<CEchoShims_mmsghdr>
    private let replies: UnsafeMutablePointer<CEchoShims_mmsghdr>
    /// For each reply, the index of its datagram (for its length).
    private let replyLengths: UnsafeMutablePointer<Int>

    // Counts since the last `publish`.
    private var receivedCount: UInt64 = 0
    private var echoedCount: UInt64 = 0
    private var echoedBytes: UInt64 = 0
    private let drops: UnsafeMutablePointer<UInt64>

    /// - Throws: `SystemError` if the buffers cannot be mapped.
    init(policy: DatagramPolicy, logger: Logger) throws(SystemError) {
        self.policy = policy
        self.logger = logger
        let n = Self.batchSize
        let length = n * slotStride
        // Mapped, so untouched parts cost nothing, and MADV_DONTFORK: the fork model's children
        // (forked from the parent that serves UDP) do not inherit them.
        let mapped = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let mapped, mapped != MAP_FAILED else { throw SystemError("mmap", errno: errno) }
        _ = madvise(mapped, length, MADV_DONTFORK)
        buffers = mapped
        receiveVectors = .allocate(capacity: n)
        sendVectors = .allocate(capacity: n)
        addresses = .allocate(capacity: n)
        received = .allocate(capacity: n)
        replies = .allocate(capacity: n)
        replyLengths = .allocate(capacity: n)
        drops = .allocate(capacity: DatagramDrop.allCases.count)
        drops.initialize(repeating: 0, count: DatagramDrop.allCases.count)
        addresses.initialize(repeating: sockaddr_in6(), count: n)
        replyLengths.initialize(repeating: 0, count: n)
        for i in 0..<n {
            let base = buffers + i * slotStride
            receiveVectors[i] = iovec(iov_base: base, iov_len: Self.maximumDatagram)
            sendVectors[i] = iovec(iov_base: base, iov_len: 0)
            var header = msghdr()
            header.msg_name = UnsafeMutableRawPointer(addresses + i)
            header.msg_namelen = socklen_t(MemoryLayout<sockaddr_in6>.size)
            header.msg_iov = receiveVectors + i
            header.msg_iovlen = 1
            received[i] = CEchoShims_mmsghdr(msg_hdr: header, msg_len: 0)
            replies[i] = CEchoShims_mmsghdr(msg_hdr: msghdr(), msg_len: 0)
        }
    }

    deinit {
        munmap(buffers, Self.batchSize * slotStride)
        receiveVectors.deallocate()
        sendVectors.deallocate()
        addresses.deallocate()
        received.deallocate()
        replies.deallocate()
        replyLengths.deallocate()
        drops.deallocate()
    }

    /// Echoes what `fd` has queued, a batch at a time, for at most `roundsPerWakeup` batches
    /// (level-triggered epoll reports the socket again if more is left).
    func serve(_ fd: Int32) {
        for _ in 0..<Self.roundsPerWakeup {
            for i in 0..<Self.batchSize {
                // recvmmsg writes the address length and flags back: reset them each time.
                received[i].msg_hdr.msg_namelen = socklen_t(MemoryLayout<sockaddr_in6>.size)
                received[i].msg_hdr.msg_flags = 0
            }
            let n = CEchoShims_recvmmsg(fd, received, UInt32(Self.batchSize), Int32(MSG_DONTWAIT))
            if n < 0 {
                let err = errno
                if err == EAGAIN || err == EWOULDBLOCK { return }
                if err == EINTR { continue }
                // A pending ICMP error (ECONNREFUSED and friends) surfaces here; the next call
                // goes on with the queue.
                warning.warn(logger, "recvmmsg failed on a UDP socket", metadata: ["error": "\(SystemError("recvmmsg", errno: err))"])
                return
            }
            receivedCount &+= UInt64(n)
            let count = Int(n)
            reply(fd, count: filter(count))
            if count < Self.batchSize { return }
        }
    }

    /// Keeps the datagrams that may be echoed and fills `replies` with them, in order.
    /// - Returns: how many replies there are.
    @inline(__always)
    private func filter(_ count: Int) -> Int {
        var kept = 0
        var wanted = 0
        let now = monotonicNanoseconds()
        let bucket = DatagramShared.shared.perSourceBucket
        let prefix = bucket == nil ? 0 : (policy.sources?.prefixIPv6 ?? SourceKey.defaultPrefixIPv6)
        for i in 0..<count {
            let header = received[i].msg_hdr
            // A datagram larger than the buffer: echoing its first part would be a lie.
            if header.msg_flags & Int32(MSG_TRUNC) != 0 {
                drop(.truncated, i)
                continue
            }
            // sin_port and sin6_port sit at the same offset.
            let port = UInt16(bigEndian: addresses[i].sin6_port)
            if let reason = policy.refusal(sourcePort: port) {
                drop(reason, i)
                continue
            }
            if let bucket, let table = policy.sources,
                let key = SourceKey(UnsafeRawPointer(addresses + i), prefixIPv6: prefix),
                !table.takeToken(key, bucket: bucket, now: now)
            {
                drop(.perSource, i)
                continue
            }
            let length = Int(received[i].msg_len)
            // The reply is the request's own bytes and length: never larger than the request.
            sendVectors[i].iov_len = length
            var out = msghdr()
            out.msg_name = UnsafeMutableRawPointer(addresses + i)
            out.msg_namelen = header.msg_namelen
            out.msg_iov = sendVectors + i
            out.msg_iovlen = 1
            replies[kept] = CEchoShims_mmsghdr(msg_hdr: out, msg_len: 0)
            replyLengths[kept] = length
            kept += 1
            wanted += length
        }
        guard kept > 0 else { return 0 }
        // The output cap, for the whole batch at once; what it does not grant is dropped, the
        // replies that fit kept in order.
        let granted = DatagramShared.shared.takeOutput(wanted, now: now)
        if granted == wanted { return kept }
        var budget = granted
        var fitting = 0
        for r in 0..<kept {
            let length = replyLengths[r]
            if length <= budget {
                budget -= length
                replies[fitting] = replies[r]
                replyLengths[fitting] = length
                fitting += 1
            } else {
                drop(.outputCap, nil)
            }
        }
        DatagramShared.shared.returnOutput(budget)
        return fitting
    }

    /// Sends the first `count` replies; what the socket will not take now is dropped, not queued.
    @inline(__always)
    private func reply(_ fd: Int32, count: Int) {
        var start = 0
        while start < count {
            let sent = CEchoShims_sendmmsg(fd, replies + start, UInt32(count - start), Int32(MSG_DONTWAIT))
            if sent > 0 {
                for r in start..<(start + Int(sent)) { echoedBytes &+= UInt64(replyLengths[r]) }
                echoedCount &+= UInt64(sent)
                start += Int(sent)
                continue
            }
            let err = errno
            if err == EINTR { continue }
            if err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS {
                // The send buffer is full: the rest of the batch is dropped, never queued.
                drops[DatagramDrop.busy.rawValue] &+= UInt64(count - start)
                warning.warn(logger, "UDP send buffer full; replies dropped", metadata: ["udp.dropped": "\(count - start)"])
                return
            }
            // This reply cannot go (EPERM from a firewall, unreachable network): skip it.
            drops[DatagramDrop.sendError.rawValue] &+= 1
            warning.warn(logger, "cannot send a UDP echo", metadata: ["error": "\(SystemError("sendmmsg", errno: err))"])
            start += 1
        }
    }

    private func drop(_ reason: DatagramDrop, _ index: Int?) {
        drops[reason.rawValue] &+= 1
        guard let index else { return }
        let address = addresses + index
        warning.warn(
            logger, "UDP datagram dropped",
            metadata: ["udp.drop": "\(reason.name)", "udp.peer": "\(Self.describe(address))"])
    }

    private static func describe(_ address: UnsafeMutablePointer<sockaddr_in6>) -> String {
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: MemoryLayout<sockaddr_in6>.size)) }
        return SocketAddress(storage).map { "\($0)" } ?? "unknown"
    }

    /// Adds the counts since the last call to the shared totals (once per loop turn, not per
    /// datagram).
    func publish() {
        guard receivedCount != 0 || echoedCount != 0 || (0..<DatagramDrop.allCases.count).contains(where: { drops[$0] != 0 })
        else { return }
        DatagramShared.shared.add(received: receivedCount, echoed: echoedCount, bytes: echoedBytes, drops: drops)
        receivedCount = 0
        echoedCount = 0
        echoedBytes = 0
        drops.update(repeating: 0, count: DatagramDrop.allCases.count)
    }
}

/// The thread model's UDP thread: one engine, its own epoll set over the UDP sockets and an
/// eventfd for the stop.
final class DatagramThread: @unchecked Sendable {
    // @unchecked: after `start`, `engine` and `epoll` are used by the thread only; `stop` only
    // writes the eventfd, then joins.
    private let sockets: [Int32]
    private let engine: DatagramEcho
    private let epoll: Epoll
    private let wakeup: EventFD
    private let stopping = Atomic<Bool>(false)
    private var thread: JoinableThread?
    private let logger: Logger

    init(sockets: [Int32], policy: DatagramPolicy, logger: Logger) throws(SystemError) {
        self.sockets = sockets
        self.logger = logger
        engine = try DatagramEcho(policy: policy, logger: logger)
        epoll = try Epoll()
        wakeup = try EventFD()
        try epoll.add(wakeup.descriptor.rawValue, events: .input, token: UInt64(sockets.count))
        for (i, fd) in sockets.enumerated() { try epoll.add(fd, events: .input, token: UInt64(i)) }
    }

    /// Starts the thread.
    func start() throws(SystemError) {
        thread = try JoinableThread(name: "echod-udp") { [self] in run() }
    }

    /// Stops the thread and waits for it.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        wakeup.wake()
        thread?.join()
        thread = nil
    }

    private func run() {
        let events = UnsafeMutableBufferPointer<epoll_event>.allocate(capacity: sockets.count + 1)
        defer { events.deallocate() }
        while !stopping.load(ordering: .relaxed) {
            let n: Int
            do {
                n = try epoll._blockingWaitForEvents(into: events, timeoutMilliseconds: 1000)
            } catch {
                logger.critical("epoll_wait failed; the UDP thread stops", metadata: ["error": "\(error)"])
                return
            }
            for i in 0..<n {
                let token = Int(events[i].data.u64)
                if token < sockets.count { engine.serve(sockets[token]) }
            }
            engine.publish()
        }
    }
}
