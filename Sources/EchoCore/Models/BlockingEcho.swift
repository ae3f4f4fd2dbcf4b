// SPDX-License-Identifier: Apache-2.0
// The echo loop of the thread and fork models: plain blocking read and write on one
// connection, as in the classic servers those models stand for.
//
// A graceful stop reaches a blocked session as a signal whose handler (CEchoShims) sets a flag
// and is installed without SA_RESTART, so the blocked recv(2) or send(2) returns EINTR. The
// session then echoes what has already arrived, shuts its write side and waits for the peer to
// close. A signal landing between the flag check and the next recv() is not lost for good: the
// controller repeats it every 100 ms until the session is gone, and closes what is left at the
// stop deadline.
import CEchoShims
import Glibc

/// Blocking echo on one connected socket.
public enum BlockingEcho {
    /// Serves `fd` until the peer closes, an error, or a stop; does not close `fd`.
    ///
    /// - Parameters:
    ///   - fd: a connected, blocking stream socket.
    ///   - buffer: scratch memory of `capacity` bytes.
    ///   - stopRequested: polled after every interrupted call.
    ///   - echoed: told how many bytes went back, in batches (at most every 1 MiB and at the end).
    ///   - handOver: at a restart, takes the connection with the bytes not yet echoed (called
    ///     once a stop is requested, at the top of the loop or when a send is interrupted) and
    ///     returns true if it took it; false or nil means a graceful stop.
    /// - Returns: true when `handOver` took the connection (the caller must not close `fd`).
    @discardableResult
    public static func serve(
        fd: Int32, buffer: UnsafeMutableRawPointer, capacity: Int,
        stopRequested: () -> Bool, echoed: (UInt64) -> Void,
        handOver: ((UnsafeRawBufferPointer) -> Bool)? = nil
    ) -> Bool {
        var unreported: UInt64 = 0
        defer { if unreported > 0 { echoed(unreported) } }
        while true {
            if stopRequested() {
                if let handOver, handOver(UnsafeRawBufferPointer(start: buffer, count: 0)) { return true }
                drainAndLinger(fd: fd, buffer: buffer, capacity: capacity, echoed: &unreported)
                return false
            }
            switch SocketIO.receive(fd, into: buffer, count: capacity) {
            case .transferred(let n):
                var handedOver = false
                var written = 0
                let delivered = writeAll(fd: fd, buffer, count: n) { offset in
                    guard let handOver, stopRequested() else { return false }
                    handedOver = handOver(UnsafeRawBufferPointer(start: buffer + offset, count: n - offset))
                    written = offset
                    return handedOver
                }
                guard delivered else {
                    unreported &+= UInt64(written)
                    return handedOver
                }
                unreported &+= UInt64(n)
                if unreported >= 1 << 20 {
                    echoed(unreported)
                    unreported = 0
                }
            case .interrupted:
                continue
            case .endOfStream:
                // Everything received has been echoed (writes are synchronous), so the caller
                // may close and the FIN follows the data.
                return false
            case .wouldBlock:
                // On this blocking socket: SO_RCVTIMEO, the idle timeout, ran out.
                ConnectionTimeouts.shared.countIdle()
                return false
            case .failed:
                return false  // ECONNRESET and the like: the peer is gone
            }
        }
    }

    /// Blocks until the peer sends something (left queued, MSG_PEEK) or closes.
    ///
    /// - Returns: true when there is input to serve (data, or EOF for `serve` to see); false when
    ///   a stop arrived first or the connection failed.
    public static func waitForInput(fd: Int32, stopRequested: () -> Bool) -> Bool {
        var byte: UInt8 = 0
        while !stopRequested() {
            switch SocketIO.receive(fd, into: &byte, count: 1, flags: Int32(MSG_PEEK)) {
            case .transferred, .endOfStream: return true
            case .interrupted: continue
            case .wouldBlock:
                // On this blocking socket: SO_RCVTIMEO, the idle timeout, ran out.
                ConnectionTimeouts.shared.countIdle()
                return false
            case .failed: return false
            }
        }
        return false
    }

    /// A stop reached a connection that never sent anything: nothing to echo, so shut the write
    /// side and wait (briefly, as in `drainAndLinger`) for the peer to close.
    public static func lingerIdle(fd: Int32) {
        var scratch = [UInt8](repeating: 0, count: 512)
        var echoed: UInt64 = 0
        scratch.withUnsafeMutableBytes { raw in
            drainAndLinger(fd: fd, buffer: raw.baseAddress!, capacity: raw.count, echoed: &echoed)
        }
    }

    /// Writes all `count` bytes, waiting as needed (also on a non-blocking socket).
    /// - Returns: false if the peer went away.
    ///   - abandon: asked with the offset reached when a send is interrupted (a restart's
    ///     hand-over); true gives up the write, and writeAll returns false.
    static func writeAll(
        fd: Int32, _ buffer: UnsafeMutableRawPointer, count: Int, abandon: (Int) -> Bool = { _ in false }
    ) -> Bool {
        var offset = 0
        var unsentAtLastTimeout = Int.max
        while offset < count {
            switch SocketIO.send(fd, from: buffer + offset, count: count - offset) {
            case .transferred(let w) where w > 0:
                offset += w
                continue
            case .interrupted:
                if abandon(offset) { return false }
                continue
            case .wouldBlock:
                // On a blocking socket this is SO_SNDTIMEO: no byte went into the send buffer for
                // that long. That is not yet a stall: the kernel wakes a blocked sender only once
                // a third of its (autotuned, often MiB) buffer is free, so a slow reader that
                // takes a little now and then looks the same. The send queue tells them apart: a
                // stall is a timeout over which the queue did not shrink (so a stalled peer is
                // closed after one to two SendTimeoutSec=).
                if ConnectionTimeouts.isBlocking(fd) {
                    let queued = ConnectionTimeouts.unsentBytes(fd)
                    if queued < unsentAtLastTimeout {
                        unsentAtLastTimeout = queued
                        continue
                    }
                    ConnectionTimeouts.shared.countSend()
                    return false
                }
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&pfd, 1, -1)
                continue
            case .transferred, .endOfStream, .failed:
                return false
            }
        }
        return true
    }

    /// Echoes until the peer has been quiet for the drain quiet period (bytes it wrote before
    /// the stop may still be on their way), shuts the write side, then reads and discards until
    /// the peer closes (closing with unread input would send a reset that can destroy echoed
    /// bytes still on their way).
    static func drainAndLinger(fd: Int32, buffer: UnsafeMutableRawPointer, capacity: Int, echoed: inout UInt64) {
        let quiet = Int64(drainQuietPeriodMilliseconds) * 1_000_000
        var lastData = monotonicNanoseconds()
        while true {
            switch SocketIO.receive(fd, into: buffer, count: capacity, flags: Int32(MSG_DONTWAIT)) {
            case .transferred(let n):
                guard writeAll(fd: fd, buffer, count: n) else { return }
                echoed &+= UInt64(n)
                lastData = monotonicNanoseconds()
                continue
            case .interrupted:
                continue
            case .endOfStream, .failed:
                return
            case .wouldBlock:
                break
            }
            // Nothing readable: wait for more until the quiet period has passed. The controller
            // re-sends its signal while stopping, so poll may return EINTR: recompute and go on.
            let left = lastData + quiet - monotonicNanoseconds()
            if left <= 0 { break }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, Int32(left / 1_000_000) + 1)
        }
        shutdown(fd, Int32(SHUT_WR))
        while true {
            switch SocketIO.receive(fd, into: buffer, count: capacity) {
            case .transferred, .interrupted: continue
            case .endOfStream, .wouldBlock, .failed: return
            }
        }
    }
}
