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
