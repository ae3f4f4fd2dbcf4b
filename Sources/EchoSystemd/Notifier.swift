// SPDX-License-Identifier: Apache-2.0
// The only module that imports libsystemd. Everything here is a no-op outside systemd:
// sd_notify returns 0 when $NOTIFY_SOCKET is unset, sd_listen_fds returns 0 without
// $LISTEN_FDS.
import CSystemd
import EchoCore
import Glibc

/// `sd_notify(3)` for the daemon's state: READY, STATUS, RELOADING, STOPPING, WATCHDOG, ERRNO.
public struct SystemdNotifier: DescriptorStore {
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

extension SystemdNotifier {
    private static let destination = "org.freedesktop.systemd1"
    /// The unit of the calling process (systemd resolves "self" from the sender's credentials).
    private static let selfPath = "/org/freedesktop/systemd1/unit/self"

    /// Whether the stop under way is a restart. First the marker file of the unit's ExecStop=
    /// hook (`restartMarker`, see packaging/echod.service); without it, asks systemd over the
    /// system bus (sd-bus, through dbus-daemon) whether it is a restart: the unit's pending job is of type "restart" (`systemctl restart`,
    /// `try-restart`, `reload-or-restart` of an active unit, a package upgrade's
    /// `deb-systemd-invoke restart`), and `FileDescriptorStoreMax=` has room for the hand-over.
    ///
    /// Anything else, or no answer within a second (no system bus on a minimal host or in a
    /// container, dbus-daemon stopping during shutdown), is a stop: echod then drains
    /// gracefully, which loses nothing but the connections. The private socket
    /// /run/systemd/private would answer without dbus-daemon but is root's alone, and echod runs
    /// as a dynamic user; an ExecStop= hook cannot tell either, since systemd 252 passes it no
    /// job type.
    public func stopIntent() -> StopIntent {
        guard getenv("NOTIFY_SOCKET") != nil else { return .stop(reason: "not started by systemd") }
        // The unit's ExecStop= hook (run as root, before SIGTERM) asked systemd over its private
        // socket and left this file if the job is a restart: no system bus needed.
        if let directory = getenv("RUNTIME_DIRECTORY").map({ String(cString: $0) }) {
            let marker = "\(directory.split(separator: ":").first.map(String.init) ?? directory)/\(Self.restartMarker)"
            if access(marker, F_OK) == 0 {
                unlink(marker)
                return .restart
            }
        }
        return askBus()
    }

    /// The file echod.service's ExecStop= hook creates in `$RUNTIME_DIRECTORY` when the unit's
    /// job is a restart.
    public static let restartMarker = "restart-job"

    private func askBus() -> StopIntent {
        var bus: OpaquePointer?
        let r = sd_bus_open_system(&bus)
        guard r >= 0, let bus else { return .stop(reason: "no system bus: \(SystemError("sd_bus_open_system", errno: -r))") }
        defer { sd_bus_flush_close_unref(bus) }
        _ = sd_bus_set_method_call_timeout(bus, 1_000_000)
        var jobID: UInt32 = 0
        var jobPath: UnsafeMutablePointer<CChar>?
        let j = echod_bus_unit_job(bus, Self.selfPath, &jobID, &jobPath)
        defer { free(jobPath) }
        guard j >= 0, let jobPath else { return .stop(reason: "cannot read the unit's job: \(SystemError("sd_bus Unit.Job", errno: -j))") }
        guard jobID != 0 else { return .stop(reason: "no job (the signal did not come from systemctl)") }
        var type: UnsafeMutablePointer<CChar>?
        var error = sd_bus_error()
        let t = sd_bus_get_property_string(bus, Self.destination, jobPath, "org.freedesktop.systemd1.Job", "JobType", &error, &type)
        sd_bus_error_free(&error)
        defer { free(type) }
        guard t >= 0, let type else { return .stop(reason: "cannot read the job type: \(SystemError("sd_bus Job.JobType", errno: -t))") }
        let jobType = String(cString: type)
        guard jobType == "restart" || jobType == "try-restart" else { return .stop(reason: "a \(jobType) job") }
        var max: UInt32 = 0
        var stored: UInt32 = 0
        let service = "org.freedesktop.systemd1.Service"
        let m = sd_bus_get_property_trivial(bus, Self.destination, Self.selfPath, service, "FileDescriptorStoreMax", nil, CChar(UInt8(ascii: "u")), &max)
        let s = sd_bus_get_property_trivial(bus, Self.destination, Self.selfPath, service, "NFileDescriptorStore", nil, CChar(UInt8(ascii: "u")), &stored)
        guard m >= 0, s >= 0 else { return .stop(reason: "cannot read FileDescriptorStoreMax=") }
        guard stored < max else {
            return .stop(reason: "a restart, but the file descriptor store is full (FileDescriptorStoreMax=\(max), \(stored) stored)")
        }
        return .restart
    }

    /// Stores `fd` in the unit's file descriptor store as `name` (`FDSTORE=1`, `FDNAME=`), then
    /// waits (up to 5 s) until systemd has processed the message, so that the process may exit
    /// at once without racing its own notification. The corresponding C functions are
    /// `sd_pid_notify_with_fds(3)` and `sd_notify_barrier(3)`.
    public func store(_ fd: Int32, name: String) -> Bool {
        var fds = [fd]
        let sent = sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=\(name)", &fds, 1)
        guard sent > 0 else { return false }
        return sd_notify_barrier(0, 5_000_000) >= 0
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
