// SPDX-License-Identifier: Apache-2.0

import CEchoShims
import Glibc
import Logging

/// echod's settings, as read from `/etc/echod/echod.conf` and its drop-ins.
///
/// `init()` gives the built-in defaults; `ConfigurationLoader` layers files on top. The keys,
/// their syntax and their defaults are listed in the shipped `etc/echod.conf`.
///
/// Equality compares every stored property, `origins` and `sources` included; clear those two to
/// compare settings only.
public struct Configuration: Sendable, Equatable {
    /// `[Server] Model=`: how connections are served. Default `event`.
    public var model: ConcurrencyModel
    /// `[Server] Listen=`: addresses echod binds itself when systemd passes no sockets.
    /// Default `[127.0.0.1:7007]`. Empty when the files end with a bare `Listen=`.
    public var listen: [SocketAddress]
    /// `[Server] ListenDatagram=`: UDP addresses echod binds itself for the UDP echo when systemd
    /// passes no sockets. Default empty: no UDP.
    public var listenDatagram: [SocketAddress]
    /// `[UDP] MaxBytesPerSecond=`: the most echod sends back over UDP per second, across every
    /// socket, worker and source (a token bucket on bytes holding one second's worth, and at least
    /// one largest datagram). Default `defaultUDPMaxBytesPerSecond` (16 MiB/s); nil
    /// (`infinity`) for no cap.
    public var udpMaxBytesPerSecond: UInt64?
    /// `[UDP] RatePerSource=`: datagrams per second one source (an IPv4 address, or an IPv6
    /// prefix of `SourcePrefixIPv6=` bits) gets echoed, in thousandths per second (a token
    /// bucket in the UDP echo's own `SourceTable`). Default 1000/s; nil (`infinity`) for none.
    public var udpRatePerSource: Int?
    /// `[UDP] BurstPerSource=`: the bucket's size in datagrams; nil (`auto`, the default) for one
    /// second's worth of `RatePerSource=`.
    public var udpBurstPerSource: Int?
    /// `[Server] Workers=`: worker threads, 0 to 1024; 0 (the default) means one per CPU.
    public var workers: Int
    /// `[Server] Processes=`: worker processes, each serving every listener with the model
    /// (see `processCount`). Default `.count(1)`: echod is one process, as without the key.
    public var processes: ProcessCount
    /// `[Server] MaxConnections=`: connections open at once, per process. Default `.auto`.
    public var maxConnections: ConnectionLimit
    /// `[Server] Backlog=`: the `listen(2)` backlog for sockets echod binds, 1 to 1,000,000.
    /// Default 4096; the kernel caps it at `net.core.somaxconn`.
    public var backlog: Int32
    /// `[Server] StopTimeoutSec=`: how long a graceful stop may take before the remaining
    /// connections are closed. More than 0, at most 1 hour; default 10 seconds.
    public var stopTimeout: Duration
    /// `[Server] IdleTimeoutSec=`: a connection that neither sends nor receives for this long is
    /// closed. From 1 ms to 24 hours; nil (`infinity`, the default) for never.
    public var idleTimeout: Duration?
    /// `[Server] SendTimeoutSec=`: a connection whose echo has made no progress against a full
    /// send buffer for this long (a peer that writes and never reads) is closed. From 1 ms to
    /// 24 hours, or nil (`infinity`) for never; default `defaultSendTimeout`, 5 minutes.
    public var sendTimeout: Duration?
    /// `[Server] MaxConnectionsPerSource=`: connections one source (see `sourcePrefixIPv6`) may
    /// have open at once across the service; more are accepted and closed at once. 1 to
    /// 10,000,000; nil (`infinity`, the default) for no limit.
    public var maxConnectionsPerSource: Int?
    /// `[Server] MaxConnectionRatePerSource=`: new connections per second one source may make
    /// (a token bucket), in thousandths per second; nil (`infinity`, the default) for no limit.
    public var maxConnectionRatePerSource: Int?
    /// `[Server] MaxConnectionBurstPerSource=`: the bucket's size, 1 to 1,000,000; nil (`auto`,
    /// the default) for one second's worth of the rate, at least 1.
    public var maxConnectionBurstPerSource: Int?
    /// `[Server] SourcePrefixIPv6=`: the leading bits of an IPv6 address that name one source
    /// for every per-source feature, 1 to 128. Default 64.
    public var sourcePrefixIPv6: Int
    /// `[Server] LogLevel=`: the least severe level logged. Default `info`.
    public var logLevel: Logger.Level
    /// `[Thread] StackSize=`: stack of each connection thread in the thread model, in bytes.
    /// Default 64 KiB (see etc/echod.conf for what was measured).
    public var threadStackSize: Int
    /// `[Thread] MaxThreads=`: connection threads alive at once in the thread model. Default 16384.
    public var maxThreads: Int
    /// `[Fork] MaxChildren=`: child processes alive at once in the fork model. Default 4096.
    public var maxChildren: Int
    /// `[Limits] NoFile=`: the soft `RLIMIT_NOFILE` applied at start. Default `.max` (the hard limit).
    public var noFile: ResourceLimitValue
    /// `[Limits] NProc=`: the soft `RLIMIT_NPROC` (processes and threads of echod's user).
    /// Default nil: left as inherited.
    public var nProc: ResourceLimitValue?
    /// `[Limits] Core=`: the soft `RLIMIT_CORE` in bytes. Default nil: left as inherited.
    public var core: ResourceLimitValue?
    /// `[Limits] StackSize=`: the soft `RLIMIT_STACK` in bytes (the main thread's stack, and so
    /// each fork-model child's). Default nil: left as inherited.
    public var stackSize: ResourceLimitValue?
    /// `[Debug] WatchdogTestTrigger=`: when true, SIGUSR1 makes the first worker hang (it stops
    /// its loop for good), so tests can check that the watchdog notices. Default false; never
    /// set it in production.
    public var watchdogTestTrigger: Bool
    /// Where each key's effective value came from, keyed "Section.Key" (e.g. "Limits.NoFile");
    /// absent = default.
    ///
    /// List keys also get one entry per element, keyed "Section.Key[index]" (e.g.
    /// "Server.Listen[0]"); their plain "Section.Key" entry is the last line that changed the list.
    /// An empty assignment to a single-valued key restores the default and removes its entry.
    public var origins: [String: SourceLocation]
    /// The file paths that were read, in order (main file if it existed, then drop-ins).
    public var sources: [String]

    /// The built-in defaults, with no origins and no sources.
    public init() {
        model = .event
        listen = Configuration.defaultListen
        listenDatagram = []
        udpMaxBytesPerSecond = Configuration.defaultUDPMaxBytesPerSecond
        udpRatePerSource = 1_000_000
        udpBurstPerSource = nil
        workers = 0
        processes = .count(1)
        maxConnections = .auto
        backlog = 4096
        stopTimeout = .seconds(10)
        idleTimeout = nil
        sendTimeout = Configuration.defaultSendTimeout
        maxConnectionsPerSource = nil
        maxConnectionRatePerSource = nil
        maxConnectionBurstPerSource = nil
        sourcePrefixIPv6 = SourceKey.defaultPrefixIPv6
        logLevel = .info
        threadStackSize = 64 * 1024
        maxThreads = 16384
        maxChildren = 4096
        noFile = .max
        nProc = nil
        core = nil
        stackSize = nil
        watchdogTestTrigger = false
        origins = [:]
        sources = []
    }

    /// How many processes serve: `Processes=` resolved (`auto`: one per CPU echod may run on,
    /// at most `ProcessCount.maximum`), and always 1 with `Model=fork` (its parent holds no
    /// connection; each connection has its process already).
    ///
    /// - Parameter availableCPUs: CPUs this process may run on.
    public func processCount(availableCPUs: Int) -> Int {
        guard model != .fork else { return 1 }
        switch processes {
        case .auto: return min(ProcessCount.maximum, max(1, availableCPUs))
        case .count(let n): return n
        }
    }

    /// `processCount(availableCPUs:)` for the CPUs this process may run on now.
    public var processCount: Int { processCount(availableCPUs: Int(CEchoShims_available_cpus())) }

    /// `SendTimeoutSec=`'s default: generous (TCP retransmits for far less before it gives
    /// up on a dead peer) and still a bound on what a client that never reads can pin.
    public static let defaultSendTimeout: Duration = .seconds(300)

    /// `MaxBytesPerSecond=`'s default: 16 MiB/s (134 Mbit/s), ample for checking a path and a
    /// bound on what a spoofed source can make echod send to its victim.
    public static let defaultUDPMaxBytesPerSecond: UInt64 = 16 << 20

    /// `127.0.0.1:7007`, built without parsing so that the default cannot fail.
    static let defaultListen: [SocketAddress] = {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(7007).bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return [.v4(address)]
    }()

    /// The effective configuration in the file's own syntax, every key present, for
    /// `echod --check-config`.
    ///
    /// Before each key line, a comment says where the value came from: `# from path:line` or
    /// `# default`. A list key has one line per element, or a bare `Key=` when it is empty.
    /// Applying the text to `Configuration()` gives back these settings (origins aside).
    ///
    /// - Returns: the text, ending with a newline.
    public func rendered() -> String {
        var out = "# Effective configuration of echod.\n"
        if sources.isEmpty {
            out += "# No configuration file was read: built-in defaults.\n"
        } else {
            out += "# Read from, in order: \(sources.joined(separator: ", "))\n"
        }
        for section in ConfigurationKey.sections {
            out += "\n[\(section)]\n"
            for key in ConfigurationKey.all where key.section == section {
                let values = key.render(self)
                if !key.isList {
                    out += originComment(key.id) + "\(key.name)=\(values.first ?? "")\n"
                } else if values.isEmpty {
                    out += originComment(key.id) + "\(key.name)=\n"
                } else {
                    for (index, value) in values.enumerated() {
                        out += originComment(ConfigurationKey.elementID(key.id, index)) + "\(key.name)=\(value)\n"
                    }
                }
            }
        }
        return out
    }

    private func originComment(_ id: String) -> String {
        if let origin = origins[id] { return "# from \(origin)\n" }
        return "# default\n"
    }
}
