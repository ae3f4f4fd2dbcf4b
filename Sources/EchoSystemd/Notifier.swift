// SPDX-License-Identifier: Apache-2.0
// The only module that imports libsystemd. Everything here is a no-op outside systemd:
// sd_notify returns 0 when $NOTIFY_SOCKET is unset, sd_listen_fds returns 0 without
// $LISTEN_FDS.
import CSystemd
import EchoCore
import Glibc

/// `sd_notify(3)` for the daemon's state: READY, STATUS, RELOADING, STOPPING, WATCHDOG, ERRNO.
public struct SystemdNotifier: ServiceNotifier {
    public init() {}

    /// Sends `assignments`. The variadic `sd_notifyf` does not import into Swift, so callers
    /// format the text and this calls `sd_notify`. Failures are ignored: a daemon must not die
    /// because its manager went away, and systemd itself treats the protocol as best-effort.
    public func notify(_ assignments: String) {
        _ = sd_notify(0, assignments)
    }

    /// `WatchdogSec=` as passed in `$WATCHDOG_USEC` (checked against `$WATCHDOG_PID`), or nil.
    public var watchdogInterval: Duration? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(usec))
    }
}

/// Socket activation: the descriptors systemd passed, with their names.
public enum ListenFDs {
    /// Takes the passed descriptors and unsets `$LISTEN_FDS`, `$LISTEN_PID`, `$LISTEN_FDNAMES`
    /// so no child process can misread them. The corresponding C function is
    /// `sd_listen_fds_with_names(3)`.
    ///
    /// - Returns: the descriptors (numbers from 3), empty when not socket-activated.
    /// - Throws: `SystemError` when the variables are malformed.
    public static func take() throws(SystemError) -> [PassedDescriptor] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = nil
        let n = sd_listen_fds_with_names(1, &names)
        if n < 0 { throw SystemError("sd_listen_fds_with_names", errno: -n) }
        var result: [PassedDescriptor] = []
        for i in 0..<Int(n) {
            var name = "unknown"
            if let names, let p = names[i] {
                name = String(cString: p)
            }
            result.append(PassedDescriptor(fd: SD_LISTEN_FDS_START + Int32(i), name: name))
        }
        if let names {
            for i in 0..<Int(n) { free(names[i]) }
            free(names)
        }
        return result
    }
}
