// SPDX-License-Identifier: Apache-2.0
// Many echo connections driven from one thread with poll(2): each flow writes its
// patterned stream as fast as the socket accepts it, reads the echo back and checks every
// byte against the pattern at the offset it belongs to, so nothing is stored and a
// mismatch is reported at its exact stream offset.
import CEchoShims
import Glibc

/// What one connection does.
struct FlowPlan {
    /// Bytes to write in total. `Int.max` writes until `EchoLoad.stopWriting()`.
    var bytes: Int
    /// Seed of the payload pattern.
    var seed: UInt64
    /// shutdown(SHUT_WR) once everything is written, then read until EOF.
    var halfClose = true
    /// Whether the flow reads at all (a non-reading client builds up backpressure).
    var reading = true
    /// Close the connection once it has written at least `written` and read at least `read`
    /// bytes, with unread data pending; `linger0` makes that close a reset (RST).
    var abort: (written: Int, read: Int, linger0: Bool)?
    /// A slow reader: at most this many bytes per recv and one recv per poll round (an odd
    /// size, so reads never line up with the server's writes).
    var readChunk: Int?
    /// SO_RCVBUF for the client socket, set before connecting (with `readChunk`, it keeps the
    /// server's sends partial).
    var receiveBuffer: Int32?
    /// The server may end the stream (FIN) once every written byte has come back, without the
    /// client having shut its write side: a graceful stop does that to clients that never
    /// half-close. EOF is then a clean end, not a failure.
    var serverMayClose = false
    /// While the client is still sending, the server may end the stream (FIN) only once the
    /// client has paused its sending for this long (a graceful stop's quiet period). The flow
    /// times its own pauses (from `EchoLoad.watchSendGaps(from:)`): an EOF while sending is a clean
    /// end if the client did pause that long (a starved client goes quiet too, and the server
    /// cannot tell), and a failure if it never did. A pause is any stretch without a send that
    /// moved bytes, whatever held the client back (its thread off the CPU, or full buffers).
    var quietPeriod: Duration?
}

/// The state of one connection in an `EchoLoad`.
final class Flow {
    let index: Int
    var plan: FlowPlan
    let socket: Socket
    fileprivate(set) var written = 0
    fileprivate(set) var readCount = 0
    fileprivate(set) var writeShut = false
    fileprivate(set) var sawEOF = false
    fileprivate(set) var aborted = false
    fileprivate(set) var failure: String?
    /// Since `EchoLoad.watchSendGaps(from:)`: the longest time between two sends that moved bytes
    /// (or from the last send to the server's EOF), and whether the server ended the stream
    /// after such a pause while the client still had bytes to send.
    fileprivate(set) var longestSendGap: Duration = .zero
    fileprivate(set) var endedAfterPause = false
    fileprivate var lastSend: ContinuousClock.Instant?
    fileprivate var gapWatchStart: ContinuousClock.Instant?

    /// The pause in sending going on at `now`, counted from the watch's start at the earliest.
    fileprivate func pause(at now: ContinuousClock.Instant) -> Duration {
        guard let start = gapWatchStart else { return .zero }
        return now - max(start, lastSend ?? start)
    }

    fileprivate init(index: Int, plan: FlowPlan, socket: Socket) {
        self.index = index
        self.plan = plan
        self.socket = socket
    }

    /// Finished one way or another: clean EOF, deliberately aborted, or failed.
    var isDone: Bool { sawEOF || aborted || failure != nil }

    /// Finished cleanly: got EOF after every written byte came back.
    var isComplete: Bool { sawEOF && failure == nil }

    var wantsWrite: Bool { !writeShut && written < plan.bytes }

    fileprivate func fail(_ message: String) {
        if failure == nil { failure = "flow \(index) (seed \(plan.seed)): \(message)" }
        socket.close()
    }
}

final class EchoLoad {
    let flows: [Flow]
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Pattern.maxChunk, alignment: 16)

    /// Connects one client per plan to `host`:`port` (blocking connects, bounded by a
    /// timeout; then non-blocking).
    init(_ host: Loopback = .v4, port: UInt16, plans: [FlowPlan]) throws {
        flows = try plans.enumerated().map { index, plan in
            let client = try Client(host, port: port, receiveBuffer: plan.receiveBuffer)
            try client.socket.setNonBlocking()
            return Flow(index: index, plan: plan, socket: client.socket)
        }
    }

    deinit { buffer.deallocate() }

    /// Aborts that happened while some non-aborting flow was mid-stream (had read some of
    /// its echo but not reached EOF), i.e. really "during other transfers".
    private(set) var abortsDuringTransfer = 0

    var failures: [String] { flows.compactMap(\.failure) }
    var totalRead: Int { flows.reduce(0) { $0 + $1.readCount } }
    var totalWritten: Int { flows.reduce(0) { $0 + $1.written } }

    /// Starts timing each flow's pauses in sending from `start` (see `FlowPlan.quietPeriod`).
    func watchSendGaps(from start: ContinuousClock.Instant) {
        for flow in flows {
            flow.gapWatchStart = start
            flow.longestSendGap = .zero
        }
    }

    /// The longest pause in sending of `flow` since the watch began, counting one still going on.
    func longestSendGap(_ flow: Flow) -> Duration {
        flow.isDone ? flow.longestSendGap : max(flow.longestSendGap, flow.pause(at: .now))
    }

    /// Makes every flow's write side end where it is now (then it half-closes if planned).
    func stopWriting() {
        for flow in flows { flow.plan.bytes = flow.written }
    }

    /// One poll(2) round of at most `timeout`.
    /// - Returns: the number of bytes moved (written plus read).
    @discardableResult
    func step(timeout: Duration) throws -> Int {
        var active: [Flow] = []
        var entries: [pollfd] = []
        for flow in flows where !flow.isDone {
            if !flow.wantsWrite && flow.plan.halfClose && !flow.writeShut {
                if shutdown(flow.socket.fd, Int32(SHUT_WR)) != 0 {
                    flow.fail("shutdown(SHUT_WR): \(String(cString: strerror(errno)))")
                    continue
                }
                flow.writeShut = true
            }
            var events: Int32 = 0
            if flow.wantsWrite { events |= Int32(POLLOUT) }
            if flow.plan.reading { events |= Int32(POLLIN) }
            guard events != 0 else { continue }
            active.append(flow)
            entries.append(pollfd(fd: flow.socket.fd, events: Int16(events), revents: 0))
        }
        guard !active.isEmpty else { return 0 }
        let ready = Glibc.poll(&entries, nfds_t(entries.count), Deadline(timeout).remainingMilliseconds())
        if ready < 0 {
            if errno == EINTR { return 0 }
            throw HarnessError.system("poll")
        }
        var moved = 0
        for (flow, entry) in zip(active, entries) where entry.revents != 0 {
            let revents = Int32(entry.revents)
            if flow.plan.reading && revents & Int32(POLLIN | POLLHUP | POLLERR) != 0 { moved += receive(flow) }
            if !flow.isDone && flow.wantsWrite && revents & Int32(POLLOUT | POLLERR) != 0 { moved += transmit(flow) }
            if !flow.isDone && !flow.plan.reading && revents & Int32(POLLERR) != 0 {
                flow.fail("socket error: \(String(cString: strerror(flow.socket.pendingError())))")
            }
            abortIfDue(flow)
        }
        return moved
    }

    /// Steps until `condition` holds or `timeout` passes.
    /// - Returns: whether the condition held.
    @discardableResult
    func run(timeout: Duration, until condition: (EchoLoad) -> Bool) throws -> Bool {
        let deadline = Deadline(timeout)
        while !condition(self) {
            if deadline.hasExpired { return false }
            try step(timeout: min(deadline.remaining, .milliseconds(100)))
        }
        return true
    }

    /// Steps until every flow is done.
    @discardableResult
    func runToCompletion(timeout: Duration) throws -> Bool {
        try run(timeout: timeout) { $0.flows.allSatisfy(\.isDone) }
    }

    /// A summary of flows that did not finish cleanly, for failure messages.
    var unfinishedSummary: String {
        let stuck = flows.filter { !$0.isDone }
        let lines = stuck.prefix(5).map {
            "flow \($0.index): wrote \($0.written)/\($0.plan.bytes == Int.max ? -1 : $0.plan.bytes), read \($0.readCount), "
                + "write side \($0.writeShut ? "shut" : "open")"
        }
        return "\(stuck.count) flows unfinished" + (lines.isEmpty ? "" : ": " + lines.joined(separator: "; "))
    }

    private func receive(_ flow: Flow) -> Int {
        var moved = 0
        let rounds = flow.plan.readChunk == nil ? 4 : 1
        let length = min(buffer.count, flow.plan.readChunk ?? buffer.count)
        for _ in 0..<rounds {
            let got = recv(flow.socket.fd, buffer.baseAddress!, length, 0)
            if got < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { break }
                flow.fail("recv after \(flow.readCount) of \(flow.written) written bytes: \(String(cString: strerror(errno)))")
                break
            }
            if got == 0 {
                if let quiet = flow.plan.quietPeriod, flow.wantsWrite, flow.gapWatchStart != nil {
                    flow.longestSendGap = max(flow.longestSendGap, flow.pause(at: .now))
                    if flow.longestSendGap >= quiet {
                        flow.endedAfterPause = true
                        flow.sawEOF = true
                        flow.socket.close()
                    } else {
                        flow.fail("EOF while still sending, after \(flow.readCount) of \(flow.written) bytes echoed; the client never paused its sending for the quiet period (\(quiet)), longest pause \(flow.longestSendGap)")
                    }
                    break
                }
                if (flow.writeShut || flow.plan.serverMayClose) && flow.readCount == flow.written && !flow.wantsWrite {
                    flow.sawEOF = true
                    flow.socket.close()
                } else {
                    flow.fail("EOF after \(flow.readCount) bytes echoed of \(flow.written) written (write side \(flow.writeShut ? "shut" : "open"))")
                }
                break
            }
            if flow.readCount + got > flow.written {
                flow.fail("echo has \(flow.readCount + got) bytes but only \(flow.written) were written")
                break
            }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<got])
            if let mismatch = Pattern.firstMismatch(chunk, seed: flow.plan.seed, offset: flow.readCount) {
                let at = flow.readCount + mismatch
                flow.fail("first differing byte at stream offset \(at) (got \(chunk[mismatch]), expected \(Pattern.bytes(seed: flow.plan.seed, offset: at, count: 1)[0]))")
                break
            }
            flow.readCount += got
            moved += got
            if flow.plan.abort != nil { break }  // give the abort check a chance at its threshold
        }
        return moved
    }

    private func transmit(_ flow: Flow) -> Int {
        var moved = 0
        for _ in 0..<4 where flow.wantsWrite {
            let length = min(Pattern.maxChunk, flow.plan.bytes - flow.written)
            let sent = Pattern.withBytes(seed: flow.plan.seed, offset: flow.written, count: length) {
                send(flow.socket.fd, $0.baseAddress!, length, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if sent < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { break }
                flow.fail("send after \(flow.written) bytes: \(String(cString: strerror(errno)))")
                break
            }
            flow.written += sent
            moved += sent
            if flow.plan.quietPeriod != nil {
                let now = ContinuousClock.now
                flow.longestSendGap = max(flow.longestSendGap, flow.pause(at: now))
                flow.lastSend = now
            }
        }
        return moved
    }

    /// Closes `flow` now, with unread data pending (a departure mid-transfer); `linger0`
    /// makes it a reset.
    func abort(_ flow: Flow, linger0: Bool) {
        guard !flow.isDone else { return }
        if linger0 { try? flow.socket.setLingerZero() }
        flow.socket.close()
        flow.aborted = true
    }

    private func abortIfDue(_ flow: Flow) {
        guard let abort = flow.plan.abort, !flow.isDone, flow.written >= abort.written, flow.readCount >= abort.read
        else { return }
        if flows.contains(where: { $0.plan.abort == nil && !$0.isDone && $0.readCount > 0 }) { abortsDuringTransfer += 1 }
        if abort.linger0 { try? flow.socket.setLingerZero() }
        flow.socket.close()
        flow.aborted = true
    }
}
