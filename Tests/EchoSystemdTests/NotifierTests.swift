// SPDX-License-Identifier: Apache-2.0
// sd_notify over a datagram socket the test binds itself, playing systemd's part.
import Glibc
import Testing

@testable import EchoCore
@testable import EchoSystemd

/// Binds an AF_UNIX datagram socket in a fresh temp dir and points $NOTIFY_SOCKET at it.
final class NotifySocket {
    let fd: Int32
    let dir: String
    let path: String

    init() throws {
        var template = Array("/tmp/echod-notify-XXXXXX".utf8CString)
        guard let d = mkdtemp(&template) else { throw SystemError("mkdtemp", errno: errno) }
        dir = String(cString: d)
        path = dir + "/notify"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw SystemError("bind", errno: errno) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setenv("NOTIFY_SOCKET", path, 1)
    }

    deinit {
        unsetenv("NOTIFY_SOCKET")
        close(fd)
        unlink(path)
        rmdir(dir)
    }

    func receive() -> String? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n], as: UTF8.self)
    }
}

@Suite(.serialized) struct NotifierTests {
    /// The unit's ExecStop= hook marks a restart job with a file in $RUNTIME_DIRECTORY: a
    /// SIGTERM with the mark is a restart (and the mark is used up); without it, and with no
    /// system bus to ask (this machine's systemd is not PID 1), a graceful stop.
    @Test func stopIntentReadsTheRestartHooksMark() throws {
        let sock = try NotifySocket()
        setenv("RUNTIME_DIRECTORY", sock.dir, 1)
        defer { unsetenv("RUNTIME_DIRECTORY") }
        let mark = sock.dir + "/" + SystemdNotifier.restartMarker
        let fd = open(mark, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        close(fd)
        #expect(SystemdNotifier().stopIntent() == .restart)
        #expect(access(mark, F_OK) != 0, "the mark must be used up")
        guard case .stop = SystemdNotifier().stopIntent() else {
            Issue.record("no mark and no bus to ask, yet not a stop")
            return
        }
        // Outside systemd the mark means nothing.
        unsetenv("NOTIFY_SOCKET")
        close(open(mark, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600))
        #expect(SystemdNotifier().stopIntent() == .stop(reason: "not started by systemd"))
        unlink(mark)
    }

    @Test func sendsAssignmentsToNotifySocket() throws {
        let sock = try NotifySocket()
        SystemdNotifier().notify("READY=1\nSTATUS=serving")
        #expect(sock.receive() == "READY=1\nSTATUS=serving")
        SystemdNotifier().notify("STOPPING=1")
        #expect(sock.receive() == "STOPPING=1")
    }

    @Test func isANoOpOutsideSystemd() {
        unsetenv("NOTIFY_SOCKET")
        SystemdNotifier().notify("READY=1")  // must neither crash nor block
        #expect(SystemdNotifier().watchdogInterval == nil)
    }

    @Test func watchdogIntervalComesFromEnvironment() {
        setenv("WATCHDOG_USEC", "3000000", 1)
        setenv("WATCHDOG_PID", "\(getpid())", 1)
        defer { unsetenv("WATCHDOG_USEC"); unsetenv("WATCHDOG_PID") }
        #expect(SystemdNotifier().watchdogInterval == .seconds(3))
        setenv("WATCHDOG_PID", "1", 1)  // meant for another process
        #expect(SystemdNotifier().watchdogInterval == nil)
    }

    @Test func noPassedDescriptorsWithoutActivation() throws {
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_PID")
        #expect(try ListenFDs.take().isEmpty)
        // Variables meant for another process are ignored (and removed).
        setenv("LISTEN_FDS", "1", 1)
        setenv("LISTEN_PID", "1", 1)
        #expect(try ListenFDs.take().isEmpty)
        #expect(getenv("LISTEN_FDS") == nil)
    }
}
