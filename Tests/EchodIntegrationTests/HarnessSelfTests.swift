// SPDX-License-Identifier: Apache-2.0
// The harness checked against /bin/sh and itself, so that an echod failure is never a
// harness failure in disguise.
import CEchoShims
import Glibc
import Testing

extension EchodIntegration {
    @Suite struct HarnessSelfTests {
        @Test func childExitStatusAndOutputAreCaptured() throws {
            try withTempDir { dir in
                let child = try Child.spawn(
                    "/bin/sh", ["-c", "echo out; echo err >&2; exit 3"],
                    stdoutPath: dir.file("o"), stderrPath: dir.file("e"))
                #expect(child.waitExit(timeout: .seconds(10)) == .exited(3))
                #expect(child.stdoutText == "out\n")
                #expect(child.stderrText == "err\n")
            }
        }

        @Test func signalledChildReportsTheSignal() throws {
            try withTempDir { dir in
                let child = try Child.spawn("/bin/sleep", ["30"], stdoutPath: dir.file("o"), stderrPath: dir.file("e"))
                #expect(child.isRunning)
                child.signal(SIGTERM)
                #expect(child.waitExit(timeout: .seconds(10)) == .signaled(SIGTERM))
            }
        }

        /// LISTEN_PID equals the pid that execs, fd 3 is the socket, and nothing else is inherited.
        @Test func socketActivationPlumbing() throws {
            try withTempDir { dir in
                let (listener, _) = try makeListener()
                let script = #"echo "$LISTEN_PID $$ $LISTEN_FDS $LISTEN_FDNAMES"; ls /proc/self/fd; readlink /proc/$$/fd/3"#
                let child = try Child.spawnActivated(
                    "/bin/sh", ["-c", script], listener: listener.fd, stdoutPath: dir.file("o"), stderrPath: dir.file("e"))
                #expect(child.waitExit(timeout: .seconds(10)) == .exited(0))
                let lines = child.stdoutText.split(separator: "\n").map(String.init)
                try #require(lines.count >= 2, "stdout: \(child.stdoutText) stderr: \(child.stderrText)")
                #expect(lines[0] == "\(child.pid) \(child.pid) 1 echo")
                // ls sees 0, 1, 2, 3 and its own directory handle.
                #expect(lines.dropFirst().prefix(5).sorted() == ["0", "1", "2", "3", "4"].sorted())
                #expect(lines.last?.hasPrefix("socket:[") == true)
                // The parent's copy keeps FD_CLOEXEC.
                #expect(fcntl(listener.fd, F_GETFD) & FD_CLOEXEC != 0)
            }
        }

        @Test func notifyListenerReceivesDatagrams() throws {
            try withTempDir { dir in
                let notify = try NotifyListener(path: dir.file("n.sock"))
                #expect(try notify.next(timeout: .milliseconds(20)) == nil)
                let child = try Child.spawn(
                    "/usr/bin/python3",
                    ["-c", "import socket,os; s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); "
                        + "[s.sendto(m.encode(), os.environ['NOTIFY_SOCKET']) for m in ['STATUS=a', 'READY=1\\nSTATUS=b']]"],
                    environment: ["NOTIFY_SOCKET": notify.path], stdoutPath: dir.file("o"), stderrPath: dir.file("e"))
                #expect(child.waitExit(timeout: .seconds(10)) == .exited(0))
                let ready = try notify.waitFor(line: "READY=1", timeout: .seconds(5))
                #expect(ready.map { notifyValue("STATUS", in: $0) } == "b")
                #expect(notify.received == ["STATUS=a", "READY=1\nSTATUS=b"])
            }
        }

        @Test func mismatchReportsFirstDifferingOffset() {
            var received = Pattern.bytes(seed: 7, count: 100_000)
            let expected = received
            #expect(describeMismatch(received: received, expected: expected) == nil)
            received[70_001] ^= 0xff
            #expect(describeMismatch(received: received, expected: expected)?.hasPrefix("first differing byte at offset 70001 ") == true)
            #expect(describeMismatch(received: Array(expected.prefix(10)), expected: expected)?.contains("got 10 bytes") == true)
            received.withUnsafeBytes { #expect(Pattern.firstMismatch($0, seed: 7, offset: 0) == 70_001) }
            // Streams of different seeds differ, and a stream is consistent across chunk boundaries.
            #expect(Pattern.bytes(seed: 1, count: 64) != Pattern.bytes(seed: 2, count: 64))
            #expect(Pattern.bytes(seed: 3, offset: 1000, count: 5_000_000) == Array(Pattern.bytes(seed: 3, count: 5_001_000).dropFirst(1000)))
        }

        /// A stand-in echo server on fd 3 (python3), optionally misbehaving, so that the load
        /// engine is shown to pass a correct echo and to catch a broken one.
        static func withStandIn<R>(_ fault: String, _ body: (UInt16) throws -> R) throws -> R {
            try withTempDir { dir in
                let (listener, port) = try makeListener()
                let server = """
                    import socket, sys, threading
                    fault = sys.argv[1]
                    s = socket.socket(fileno=3)
                    def serve(c):
                        seen = 0
                        while True:
                            d = bytearray(c.recv(65536))
                            if not d: break
                            if fault == "flip" and seen <= 100000 < seen + len(d): d[100000 - seen] ^= 1
                            if fault == "drop" and seen <= 100000 < seen + len(d): d = d[:100000 - seen] + d[100000 - seen + 1:]
                            seen += len(d)
                            c.sendall(d)
                        if fault == "keepopen": threading.Event().wait()
                        c.close()
                    while True:
                        c, _ = s.accept()
                        threading.Thread(target=serve, args=(c,), daemon=True).start()
                    """
                let child = try Child.spawn(
                    "/usr/bin/python3", ["-c", server, fault], fd3: listener.fd, stdoutPath: dir.file("o"), stderrPath: dir.file("e"))
                defer { child.terminate() }
                listener.close()
                return try body(port)
            }
        }

        @Test func echoLoadPassesACorrectEcho() throws {
            try Self.withStandIn("none") { port in
                try roundTrip(port: port, count: 10_000)
                let plans = (0..<8).map { FlowPlan(bytes: 300_000, seed: UInt64($0)) }
                let load = try EchoLoad(port: port, plans: plans)
                #expect(try load.runToCompletion(timeout: .seconds(20)), "\(load.unfinishedSummary)")
                #expect(load.failures == [])
                let complete = load.flows.filter(\.isComplete).count
                #expect(complete == plans.count)
            }
        }

        @Test func echoLoadCatchesACorruptedByte() throws {
            try Self.withStandIn("flip") { port in
                let load = try EchoLoad(port: port, plans: [FlowPlan(bytes: 300_000, seed: 5)])
                try load.runToCompletion(timeout: .seconds(20))
                #expect(load.failures.count == 1)
                #expect(load.failures.first?.contains("first differing byte at stream offset 100000 ") == true, "\(load.failures)")
            }
        }

        @Test func echoLoadCatchesADroppedByte() throws {
            try Self.withStandIn("drop") { port in
                let load = try EchoLoad(port: port, plans: [FlowPlan(bytes: 300_000, seed: 6)])
                try load.runToCompletion(timeout: .seconds(20))
                #expect(load.failures.first?.contains("first differing byte at stream offset 100000 ") == true, "\(load.failures)")
            }
        }

        @Test func echoLoadWaitsForEOFAndTimesOut() throws {
            try Self.withStandIn("keepopen") { port in
                let load = try EchoLoad(port: port, plans: [FlowPlan(bytes: 1000, seed: 7)])
                let finished = try load.runToCompletion(timeout: .milliseconds(500))
                #expect(!finished)
                #expect(load.flows[0].readCount == 1000)
                #expect(!load.flows[0].isComplete)
                #expect(throws: HarnessError.self) {
                    let client = try Client(port: port, timeout: .milliseconds(300))
                    try client.writeAll([1, 2, 3])
                    try client.shutdownWrite()
                    _ = try client.readToEOF()
                }
            }
        }
    }
}
