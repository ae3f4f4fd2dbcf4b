// SPDX-License-Identifier: Apache-2.0
/// Where the daemon reports its state to a service manager (`sd_notify(3)`'s protocol).
///
/// EchoCore talks to this protocol; EchoSystemd implements it over libsystemd, so the core
/// library needs no libsystemd and tests can record what would be sent.
public protocol ServiceNotifier: Sendable {
    /// Sends newline-separated `KEY=VALUE` assignments, e.g. `"READY=1\nSTATUS=serving"`.
    /// Outside systemd (no `$NOTIFY_SOCKET`) this does nothing.
    func notify(_ assignments: String)

    /// The watchdog interval systemd expects pings within (`WatchdogSec=`), or nil when off.
    var watchdogInterval: Duration? { get }
}

/// A notifier that sends nothing, for running outside a service manager.
public struct NoNotifier: ServiceNotifier {
    public init() {}
    public func notify(_ assignments: String) {}
    public var watchdogInterval: Duration? { nil }
}

/// A descriptor handed over by the service manager (socket activation).
public struct PassedDescriptor: Equatable, Sendable {
    /// The descriptor number (3 and up).
    public var fd: Int32
    /// Its `FileDescriptorName=`, or "unknown" when the manager gave none.
    public var name: String

    public init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
    }
}

/// What a stop request means, as the service manager says when asked at SIGTERM.
public enum StopIntent: Equatable, Sendable {
    /// The unit is being restarted and its file descriptor store has room: hand the connections
    /// over to the next echod.
    case restart
    /// Anything else: a stop, a restart without room in the store, or no answer. echod stops
    /// gracefully (drain, echo, close) and says why.
    case stop(reason: String)
}

/// What the restart hand-over needs of the service manager: whether a stop is a restart, and
/// its file descriptor store (systemd: D-Bus and `FDSTORE=1`). Separate from `ServiceNotifier`
/// so that test notifiers need not implement it.
public protocol DescriptorStore: ServiceNotifier {
    /// Asks the service manager what the stop under way is (bounded: a second at most).
    func stopIntent() -> StopIntent
    /// Stores `fd` under `name` and waits until the manager has processed it.
    /// - Returns: false when it could not be sent or confirmed.
    func store(_ fd: Int32, name: String) -> Bool
}
