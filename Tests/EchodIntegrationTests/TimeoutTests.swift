// SPDX-License-Identifier: Apache-2.0
// IdleTimeoutSec= and SendTimeoutSec= (issue 13, items 4 and 5) in every model: an abusive
// client (one that never speaks; one that writes and never reads) is closed, while a
// well-behaved one beside it is served throughout; the counts appear in STATUS=; a reload
// changes the idle timeout for the connections that come after it.
//
// The timeouts are 1 s and the checks wait with deadlines several times longer than the
// timeout plus the event model's sweep interval, so a loaded machine only makes them slower.
import CEchoShims
import Glibc
import Testing

extension EchodIntegration {
    @Suite struct Timeouts {
        static func config(model: String, _ keys: String) -> String {
            Echod.config(model: model, extra: "[Server]\n" + keys)
        }

        /// Waits until the peer has closed `client` (EOF or a reset on a read), for at most
        /// `timeout`.
        /// - Returns: true if it did.
        static func closedByPeer(_ client: Client, within timeout: Duration) -> Bool {
            let deadline = Deadline(timeout)
            var scratch = [UInt8](repeating: 0, count: 65536)
            while !deadline.hasExpired {
                var entry = pollfd(fd: client.fd, events: Int16(POLLIN), revents: 0)
                guard poll(&entry, 1, 100) == 1 else { continue }
                let got = scratch.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
                if got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR) { return true }
            }
            return false
        }

        /// One small echo, byte-exact.
        static func ping(_ client: Client, _ n: Int) throws {
            let bytes = (0..<100).map { UInt8(truncatingIfNeeded: $0 &+ n) }
            try client.writeAll(bytes)
            #expect(try client.readExactly(bytes.count) == bytes)
        }

        /// The STATUS= of the reload answer (READY=1 after SIGHUP) carries the timeout counts.
        static func statusAfterReload(_ server: EchodServer) throws -> String? {
            server.child.signal(SIGHUP)
            let answer = try server.notify.waitFor(timeout: .seconds(10)) {
                notifyLines($0).contains("READY=1") && notifyValue("STATUS", in: $0)?.contains("timeouts:") == true
            }
            return answer.flatMap { notifyValue("STATUS", in: $0) }
        }

        @Test(arguments: servingModels)
        func silentClientIsClosedWhileATalkingOneIsServed(model: String) throws {
            try withEchod(config: Self.config(model: model, "IdleTimeoutSec=1\n")) { server in
                let silent = try Client(port: server.port)
                let talker = try Client(port: server.port)
                // The talker speaks every 250 ms for 3 s: never idle for the timeout.
                for n in 0..<12 {
                    try Self.ping(talker, n)
                    usleep(250_000)
                }
                #expect(Self.closedByPeer(silent, within: .seconds(5)), "silent client still open (\(model))")
                try Self.ping(talker, 99)
                // Logged with its count at the next STATUS= refresh (every 2 s), once.
                let logged = waitUntil(timeout: .seconds(6), interval: .milliseconds(100)) {
                    server.child.stderrText.contains("timeouts.idle.total=1")
                }
                #expect(logged, "no timeout log line; stderr:\n\(server.child.stderrTail())")
                #expect(server.child.stderrText.ranges(of: "closed connections past their timeouts").count == 1)
                let status = try Self.statusAfterReload(server)
                #expect(status?.contains("timeouts: 1 idle, 0 send") == true, "STATUS=\(status ?? "none")")
            }
        }

        @Test(arguments: servingModels)
        func clientThatNeverReadsIsClosedWhileAReadingOneIsServed(model: String) throws {
            try withEchod(config: Self.config(model: model, "SendTimeoutSec=1\n")) { server in
                // A small receive window, so echod's sends stall soon.
                let hoarder = try Client(port: server.port, receiveBuffer: 4096)
                try hoarder.socket.setNonBlocking()
                let chunk = [UInt8](repeating: 0x5A, count: 16384)
                // Write until the kernel takes nothing for 500 ms: echod is then blocked on us.
                var lastProgress = ContinuousClock.now
                var written = 0
                let writeDeadline = Deadline(.seconds(15))
                while ContinuousClock.now - lastProgress < .milliseconds(500), !writeDeadline.hasExpired {
                    let sent = chunk.withUnsafeBytes { send(hoarder.fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
                    if sent > 0 {
                        written += sent
                        lastProgress = .now
                    } else {
                        usleep(10_000)
                    }
                }
                #expect(written > 0)
                // A reading client beside it keeps being served, also across the timeout.
                let reader = try Client(port: server.port)
                for n in 0..<8 {
                    try Self.ping(reader, n)
                    usleep(250_000)
                }
                // Closed by echod: the next sends fail with a reset (echod closed with our
                // bytes unread), or a read sees it.
                let deadline = Deadline(.seconds(10))
                var closed = false
                while !deadline.hasExpired && !closed {
                    let sent = chunk.withUnsafeBytes { send(hoarder.fd, $0.baseAddress!, 1, Int32(MSG_NOSIGNAL)) }
                    if sent < 0 && (errno == ECONNRESET || errno == EPIPE) { closed = true }
                    if hoarder.socket.pendingError() != 0 { closed = true }
                    usleep(100_000)
                }
                #expect(closed, "client that never reads still open (\(model))")
                try Self.ping(reader, 99)
                let status = try Self.statusAfterReload(server)
                #expect(status?.contains("timeouts: 0 idle, 1 send") == true, "STATUS=\(status ?? "none")")
            }
        }

        /// SendTimeoutSec= measures a stall, not a slow transfer: a client that reads slowly (a
        /// little every 400 ms, far less often than it writes) holds echod's sends back for
        /// longer than the timeout in all, yet each of its reads lets them move, so it is served
        /// to the last byte.
        @Test(arguments: servingModels)
        func slowReaderIsServedAcrossTheSendTimeout(model: String) throws {
            try withEchod(config: Self.config(model: model, "SendTimeoutSec=2\n")) { server in
                let client = try Client(port: server.port, receiveBuffer: 4096)
                try client.socket.setNonBlocking()
                let chunk = (0..<16384).map { UInt8(truncatingIfNeeded: $0 &* 7) }
                var written = 0
                var received = 0
                var mismatch = false
                var scratch = [UInt8](repeating: 0, count: 8192)
                var lastWrite = ContinuousClock.now
                let start = ContinuousClock.now
                // Write until echod is held back (nothing taken for 300 ms), reading 8 KiB every
                // 400 ms all the while, and go on reading slowly for 6 s in all.
                let slowPhase = Deadline(.seconds(6))
                var nextRead = ContinuousClock.now
                var failure: Int32 = 0
                while !slowPhase.hasExpired && failure == 0 {
                    if ContinuousClock.now - lastWrite < .milliseconds(300) {
                        // The pattern repeats every 256 bytes: go on where the last send stopped.
                        let offset = written % 256
                        let sent = chunk.withUnsafeBytes {
                            send(client.fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL))
                        }
                        if sent > 0 {
                            written += sent
                            lastWrite = .now
                        } else if errno != EAGAIN {
                            failure = errno
                        }
                    }
                    if ContinuousClock.now >= nextRead {
                        nextRead = .now + .milliseconds(400)
                        let got = scratch.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
                        if got == 0 { failure = -1 }
                        if got < 0 && errno != EAGAIN { failure = errno }
                        if got > 0 {
                            for i in 0..<got where scratch[i] != chunk[(received + i) % 256] { mismatch = true }
                            received += got
                        }
                    }
                    usleep(5_000)
                }
                #expect(failure == 0, "connection failed during the slow phase: \(failure) (\(model))")
                #expect(received < written, "echod was never held back: the test proves nothing")
                // Now read the rest at full speed: everything written comes back.
                try client.socket.setTimeouts(.seconds(10))
                let drain = Deadline(.seconds(20))
                while received < written && !drain.hasExpired {
                    var entry = pollfd(fd: client.fd, events: Int16(POLLIN), revents: 0)
                    _ = poll(&entry, 1, 100)
                    let got = scratch.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
                    if got <= 0 && !(got < 0 && errno == EAGAIN) { break }
                    if got > 0 {
                        for i in 0..<got where scratch[i] != chunk[(received + i) % 256] { mismatch = true }
                        received += got
                    }
                }
                #expect(received == written && !mismatch, "\(received) of \(written) bytes back (\(model)) after \(ContinuousClock.now - start)")
                let status = try Self.statusAfterReload(server)
                #expect(status?.contains("timeouts: 0 idle, 0 send") == true, "STATUS=\(status ?? "none")")
            }
        }

        /// A reload sets the idle timeout for connections taken after it, which are closed; a
        /// silent client connected before it (no timeout then) stays open in the thread and fork
        /// models and is closed too in the event model.
        @Test(arguments: servingModels)
        func reloadAppliesTheIdleTimeoutToNewConnections(model: String) throws {
            try withEchod(config: Self.config(model: model, "")) { server in
                let before = try Client(port: server.port)
                try Self.ping(before, 1)
                _ = try server.dir.write("echod.conf", Self.config(model: model, "IdleTimeoutSec=1\n"))
                let status = try Self.statusAfterReload(server)
                #expect(status != nil, "no READY=1 after the reload (\(server.describeState()))")
                let after = try Client(port: server.port)
                #expect(Self.closedByPeer(after, within: .seconds(5)), "connection after the reload still open (\(model))")
                if model == "event" {
                    // Event: the workers' sweep reads the timeouts in force, open connections too.
                    #expect(Self.closedByPeer(before, within: .seconds(5)), "connection from before the reload still open")
                } else {
                    // Thread and fork: the timeout is set when a connection is taken (a fork
                    // child keeps what it was forked with), so the earlier one stays open.
                    #expect(!before.hasInput(), "connection from before the reload was closed (\(model))")
                    try Self.ping(before, 2)
                }
            }
        }
    }
}
