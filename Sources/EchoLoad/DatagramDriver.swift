// SPDX-License-Identifier: Apache-2.0
// `echoload udp`: an open loop of datagrams at a constant rate over `-c` connected UDP sockets,
// every echo verified.
//
// Each datagram carries its sequence number (bytes 0-7) and its socket's index (bytes 8-11); the
// rest is a pattern keyed by both, so an echo is checked whole: its length, its socket, its
// content. Per socket a window of the last 65,536 sequence numbers tells duplicates (seen
// twice) and reordering (arrived after a later one) apart; loss is what was sent in the
// measured period and never came back within --drain-timeout. The schedule is `rate`'s
// (message m of socket g of N due at start + (m×N+g)/rate); latency counts from the intended
// send time, so a datagram sent late (the socket buffer was full) shows its lateness.
//
// One thread: per turn it sends what is due with one sendmmsg(2) per socket, then takes what has
// come back with recvmmsg(2), 32 datagrams a call, into buffers allocated once.
import CEchoShims
import EchoCore
import Glibc
import Histogram

enum DatagramDriver {
    /// Bytes of a datagram that name it: the sequence number and the socket's index.
    static let headerSize = 16
    /// Datagrams per sendmmsg/recvmmsg.
    static let batch = 32
    /// Sequence numbers remembered per socket for duplicate and reordering checks.
    static let seqWindow: UInt64 = 1 << 16

    /// The datagram `seq` of socket `g`: `size` bytes into `buffer`.
    @inline(__always)
    static func fill(_ buffer: UnsafeMutableRawPointer, size: Int, socket g: Int, seq: UInt64) {
        let seed = seedFor(socket: g, seq: seq)
        var k = 0
        while (k + 1) * 8 <= size {
            buffer.storeBytes(of: word(seed, k), toByteOffset: k * 8, as: UInt64.self)
            k += 1
        }
        var tail = word(seed, k)
        for i in (k * 8)..<size {
            buffer.storeBytes(of: UInt8(truncatingIfNeeded: tail), toByteOffset: i, as: UInt8.self)
            tail >>= 8
        }
        buffer.storeBytes(of: seq.littleEndian, toByteOffset: 0, as: UInt64.self)
        buffer.storeBytes(of: UInt32(g).littleEndian, toByteOffset: 8, as: UInt32.self)
    }

    /// Checks an echo's pattern from byte 12 on, its header being (`g`, `seq`).
    /// - Returns: the offset of the first wrong byte, or nil.
    @inline(__always)
    static func firstMismatch(_ buffer: UnsafeRawPointer, size: Int, socket g: Int, seq: UInt64) -> Int? {
        let seed = seedFor(socket: g, seq: seq)
        @inline(__always) func expected(_ i: Int) -> UInt8 {
            UInt8(truncatingIfNeeded: word(seed, i / 8) >> (UInt64(i % 8) * 8))
        }
        for i in 12..<min(16, size) where buffer.load(fromByteOffset: i, as: UInt8.self) != expected(i) { return i }
        var k = 2
        while (k + 1) * 8 <= size {
            if buffer.loadUnaligned(fromByteOffset: k * 8, as: UInt64.self) != word(seed, k) { break }
            k += 1
        }
        // The word that differed (if any), then the tail, byte by byte.
        if k * 8 < size {
            for i in (k * 8)..<size where buffer.load(fromByteOffset: i, as: UInt8.self) != expected(i) { return i }
        }
        return nil
    }

    @inline(__always)
    static func seedFor(socket g: Int, seq: UInt64) -> UInt64 {
        var z = (UInt64(g) << 44) ^ seq &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inline(__always)
    static func word(_ seed: UInt64, _ k: Int) -> UInt64 { (seed &+ UInt64(k) &* 0x9E37_79B9_7F4A_7C15).littleEndian }

    /// One socket's state.
    struct Flow {
        var fd: Int32
        /// Next sequence number to send.
        var next: UInt64 = 0
        /// Highest sequence number echoed, plus one (0: none yet).
        var top: UInt64 = 0
        /// Bit `s % seqWindow` set when `s` has been echoed (for `s` within `seqWindow` of `top`).
        var seen: UnsafeMutablePointer<UInt64>
    }

    /// Runs `options` (mode `udp`) to the end.
    static func run(_ options: LoadOptions) throws(LoadError) -> LoadResult {
        let n = options.connections
        let size = options.size
        var flows: [Flow] = []
        defer {
            for f in flows {
                closeNoRetry(f.fd)
                f.seen.deallocate()
            }
        }
        let epoll: Epoll
        do { epoll = try Epoll() } catch { throw .system("echoload: \(error)") }
        for g in 0..<n {
            let fd = try openSocket(options, index: g)
            let seen = UnsafeMutablePointer<UInt64>.allocate(capacity: Int(seqWindow / 64))
            seen.initialize(repeating: 0, count: Int(seqWindow / 64))
            flows.append(Flow(fd: fd, seen: seen))
            do { try epoll.add(fd, events: .input, token: UInt64(g)) } catch { throw .system("echoload: \(error)") }
        }

        // Buffers and message vectors, allocated once.
        let slot = size + 1  // one byte more: a longer echo shows as MSG_TRUNC or length
        let sendBuffers = UnsafeMutableRawPointer.allocate(byteCount: batch * slot, alignment: 16)
        let receiveBuffers = UnsafeMutableRawPointer.allocate(byteCount: batch * slot, alignment: 16)
        let sendVectors = UnsafeMutablePointer<iovec>.allocate(capacity: batch)
        let receiveVectors = UnsafeMutablePointer<iovec>.allocate(capacity: batch)
        let sendMessages = UnsafeMutablePointer<CEchoShims_mmsghdr>.allocate(capacity: batch)
        let receiveMessages = UnsafeMutablePointer<CEchoShims_mmsghdr>.allocate(capacity: batch)
        let events = UnsafeMutableBufferPointer<epoll_event>.allocate(capacity: max(1, min(n, 1024)))
        defer {
            sendBuffers.deallocate()
            receiveBuffers.deallocate()
            sendVectors.deallocate()
            receiveVectors.deallocate()
            sendMessages.deallocate()
            receiveMessages.deallocate()
            events.deallocate()
        }
        for i in 0..<batch {
            sendVectors[i] = iovec(iov_base: sendBuffers + i * slot, iov_len: size)
            receiveVectors[i] = iovec(iov_base: receiveBuffers + i * slot, iov_len: slot)
            var h = msghdr()
            h.msg_iov = sendVectors + i
            h.msg_iovlen = 1
            sendMessages[i] = CEchoShims_mmsghdr(msg_hdr: h, msg_len: 0)
            h.msg_iov = receiveVectors + i
            receiveMessages[i] = CEchoShims_mmsghdr(msg_hdr: h, msg_len: 0)
        }

        let rate = options.rate ?? 1000
        let start = monotonicNanoseconds() + 10_000_000
        let schedule = RateSchedule(start: start, spacing: 1e9 / rate, connections: n)
        let window = MeasuredWindow(start: start + options.warmup, end: start + options.warmup + options.duration)
        var tally = Tally()
        tally.requested = n
        tally.established = n
        tally.latency = Latency.makeHistogram()
        var sentTotal: UInt64 = 0
        var echoedTotal: UInt64 = 0
        var sentMeasured: UInt64 = 0
        var echoedMeasured: UInt64 = 0
        var duplicates: UInt64 = 0
        var reordered: UInt64 = 0
        var sendErrors: [String: Int] = [:]
        var drainDeadline: Int64 = .max

        while true {
            let now = monotonicNanoseconds()
            // As in rate: a datagram intended in the window goes out even when the client is
            // late, unless later than --drain-timeout.
            var owed = false
            for g in 0..<n where schedule.intended(connection: g, message: flows[g].next) < window.end {
                owed = true
                break
            }
            let sending = owed && now < window.end + options.drainTimeout
            if sending {
                // What is due on each socket, up to a batch each per turn.
                for g in 0..<n {
                    var count = 0
                    let first = flows[g].next
                    while count < batch {
                        let due = schedule.intended(connection: g, message: first + UInt64(count))
                        if due > now || due >= window.end { break }
                        fill(sendBuffers + count * slot, size: size, socket: g, seq: first + UInt64(count))
                        count += 1
                    }
                    guard count > 0 else { continue }
                    var done = 0
                    while done < count {
                        let sent = CEchoShims_sendmmsg(flows[g].fd, sendMessages + done, UInt32(count - done), 0)
                        if sent > 0 {
                            done += Int(sent)
                            continue
                        }
                        let err = errno
                        if err == EINTR { continue }
                        // EAGAIN: the socket buffer is full; these go out on a later turn (late:
                        // their latency counts from the intended time all the same).
                        if err != EAGAIN && err != EWOULDBLOCK && err != ENOBUFS {
                            sendErrors[errnoName(err), default: 0] += 1
                            tally.noteFault("socket \(g): \(SystemError("sendmmsg", errno: err))")
                            done += 1  // skipped: counted as sent, so it shows as lost
                            continue
                        }
                        break
                    }
                    for m in first..<(first + UInt64(done)) where window.contains(schedule.intended(connection: g, message: m)) {
                        sentMeasured += 1
                    }
                    flows[g].next = first + UInt64(done)
                    sentTotal += UInt64(done)
                }
            } else if drainDeadline == .max {
                drainDeadline = now + options.drainTimeout
            }
            if !sending && (echoedTotal >= sentTotal || now >= drainDeadline) { break }

            var timeout: Int32 = 0
            if !sending {
                timeout = Int32(max(0, min(100, (drainDeadline - now) / 1_000_000)))
            } else {
                var soonest = Int64.max
                for g in 0..<n { soonest = min(soonest, schedule.intended(connection: g, message: flows[g].next)) }
                if soonest - now > 2_000_000 { timeout = Int32(min(100, (soonest - now) / 1_000_000 - 1)) }
            }
            let ready: Int
            do { ready = try epoll._blockingWaitForEvents(into: events, timeoutMilliseconds: timeout) } catch {
                throw .system("echoload: \(error)")
            }
            for e in 0..<ready {
                let g = Int(events[e].data.u64)
                while true {
                    for i in 0..<batch { receiveMessages[i].msg_hdr.msg_flags = 0 }
                    let got = CEchoShims_recvmmsg(flows[g].fd, receiveMessages, UInt32(batch), Int32(MSG_DONTWAIT))
                    if got <= 0 {
                        let err = errno
                        if got < 0 && err == EINTR { continue }
                        if got < 0 && err != EAGAIN && err != EWOULDBLOCK {
                            // ECONNREFUSED: an ICMP port unreachable for an earlier datagram.
                            tally.ioErrors[errnoName(err), default: 0] += 1
                            tally.noteFault("socket \(g): \(SystemError("recvmmsg", errno: err))")
                        }
                        break
                    }
                    let arrived = monotonicNanoseconds()
                    for i in 0..<Int(got) {
                        let buffer = UnsafeRawPointer(receiveBuffers + i * slot)
                        let length = Int(receiveMessages[i].msg_len)
                        if length != size || receiveMessages[i].msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0 {
                            tally.mismatches += 1
                            tally.noteFault("socket \(g): an echo of \(length) bytes for \(size)-byte datagrams")
                            continue
                        }
                        let seq = UInt64(littleEndian: buffer.loadUnaligned(as: UInt64.self))
                        let index = Int(UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
                        guard index == g, seq < flows[g].next else {
                            tally.mismatches += 1
                            tally.noteFault("socket \(g): an echo naming socket \(index), datagram \(seq), which it never sent")
                            continue
                        }
                        if let offset = firstMismatch(buffer, size: size, socket: g, seq: seq) {
                            tally.mismatches += 1
                            tally.noteFault("socket \(g): byte \(offset) of the echo of datagram \(seq) differs")
                            continue
                        }
                        // Duplicates and reordering, within the window.
                        var flow = flows[g]
                        if seq + Self.seqWindow <= flow.top {
                            reordered += 1  // too old to tell a duplicate: counted as late
                            continue
                        }
                        if seq >= flow.top {
                            // Clear the bits the window moves over (at most a window's worth).
                            var s = max(flow.top, seq + 1 >= Self.seqWindow ? seq + 1 - Self.seqWindow : 0)
                            while s <= seq {
                                let bit = s % Self.seqWindow
                                flow.seen[Int(bit / 64)] &= ~(1 << (bit % 64))
                                s += 1
                            }
                            flow.top = seq + 1
                        } else {
                            let bit = seq % Self.seqWindow
                            if flow.seen[Int(bit / 64)] & (1 << (bit % 64)) != 0 {
                                duplicates += 1
                                flows[g] = flow
                                continue
                            }
                            reordered += 1
                        }
                        let bit = seq % Self.seqWindow
                        flow.seen[Int(bit / 64)] |= 1 << (bit % 64)
                        flows[g] = flow
                        echoedTotal += 1
                        let intended = schedule.intended(connection: g, message: seq)
                        if window.contains(intended) {
                            echoedMeasured += 1
                            tally.bytesReceived += UInt64(size)
                            Latency.record(arrived - intended, into: &tally.latency!)
                        }
                    }
                    if Int(got) < batch { break }
                }
            }
        }

        tally.measuredNanos = options.duration
        tally.messages = echoedMeasured
        tally.bytesSent = sentMeasured * UInt64(size)
        tally.totalBytesSent = sentTotal * UInt64(size)
        tally.totalBytesReceived = echoedTotal * UInt64(size)
        tally.scheduled = schedule.scheduled(connections: 0..<n, in: window)
        tally.issued = sentMeasured
        tally.ioErrors.merge(sendErrors, uniquingKeysWith: +)
        tally.datagrams = DatagramFigures(
            sent: sentMeasured, echoed: echoedMeasured, lost: sentMeasured &- min(sentMeasured, echoedMeasured),
            duplicates: duplicates, reordered: reordered)
        if duplicates > 0 { tally.noteFault("\(duplicates) datagrams echoed more than once") }
        let part = PartSummary(
            index: 0, pid: getpid(), connections: n, established: n, held: 0, messages: echoedMeasured,
            faults: tally.faults, exitStatus: 0)
        return LoadResult(options: options, workers: 1, tally: tally, parts: [part])
    }

    /// A non-blocking UDP socket connected to the target (so only its echoes are received),
    /// bound to a `--source` address round-robin, with room for bursts.
    private static func openSocket(_ options: LoadOptions, index g: Int) throws(LoadError) -> Int32 {
        let target = options.target
        let fd = socket(target.family, CEchoShims_SOCK_DGRAM | CEchoShims_SOCK_NONBLOCK | CEchoShims_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { throw .system("echoload: \(SystemError("socket", errno: errno))") }
        for (force, plain) in [(SO_RCVBUFFORCE, SO_RCVBUF), (SO_SNDBUFFORCE, SO_SNDBUF)] {
            var bytes: Int32 = 4 << 20
            if setsockopt(fd, SOL_SOCKET, force, &bytes, 4) != 0 { _ = setsockopt(fd, SOL_SOCKET, plain, &bytes, 4) }
        }
        if !options.sources.isEmpty {
            let source = options.sources[g % options.sources.count]
            let rc = source.withSockAddr { bind(fd, $0, $1) }
            if rc != 0 {
                let err = errno
                closeNoRetry(fd)
                throw .usage("echoload: cannot use source address \(source.host): \(SystemError("bind", errno: err).reason)")
            }
        }
        let rc = target.withSockAddr { connect(fd, $0, $1) }
        if rc != 0 {
            let err = errno
            closeNoRetry(fd)
            throw .unreachable("echoload: cannot connect a UDP socket to \(target): \(SystemError("connect", errno: err).reason)")
        }
        return fd
    }
}

/// `udp`'s own figures, for the measured period.
public struct DatagramFigures: Sendable, Equatable {
    /// Datagrams sent whose intended time fell in the measured period.
    public var sent: UInt64 = 0
    /// Of those, echoed once, whole and correct.
    public var echoed: UInt64 = 0
    /// Of those, never echoed within --drain-timeout.
    public var lost: UInt64 = 0
    /// Echoes of a datagram already echoed (a fault).
    public var duplicates: UInt64 = 0
    /// Echoes that arrived after the echo of a later datagram of their socket.
    public var reordered: UInt64 = 0

    public init(sent: UInt64 = 0, echoed: UInt64 = 0, lost: UInt64 = 0, duplicates: UInt64 = 0, reordered: UInt64 = 0) {
        (self.sent, self.echoed, self.lost, self.duplicates, self.reordered) = (sent, echoed, lost, duplicates, reordered)
    }

    /// Lost datagrams as a fraction of those sent.
    public var lossFraction: Double { sent == 0 ? 0 : Double(lost) / Double(sent) }
}
