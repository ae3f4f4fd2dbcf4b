// SPDX-License-Identifier: Apache-2.0
// The daemon's side of the restart hand-over (the format is Connection/Handover.swift): at
// start, sort the descriptors systemd passed into listeners, hand-overs and strays, and take
// the connections over; at a restart's SIGTERM, the channel the models send on, stored in
// systemd's file descriptor store as the process ends.
import CEchoShims
import Glibc
import Logging

/// What a start found among the passed descriptors.
struct RestartIntake {
    /// The sockets of the socket unit (names that are not echod's store names).
    var listeners: [PassedDescriptor] = []
    /// Connections handed over by the previous echod, checked.
    var inherited: [InheritedConnection] = []

    /// Sorts `passed`: listeners go on to `ListenerSet`; `Handover.storeName` descriptors are
    /// drained (`Handover.receive`), closed and removed from the store (`FDSTOREREMOVE=1`: a
    /// stored copy would keep the channel, and so nothing, alive, but the store must not
    /// accumulate); other names with echod's store prefix (another release's format) are
    /// logged, closed and removed. Nothing passed is ever served as a listener unless it is
    /// outside echod's store names, where `ListenerSet` checks it.
    static func take(_ passed: [PassedDescriptor], notifier: ServiceNotifier, logger: Logger) -> RestartIntake {
        var intake = RestartIntake()
        var removed: Set<String> = []
        for p in passed {
            guard p.name.hasPrefix(Handover.storeNamePrefix) else {
                intake.listeners.append(p)
                continue
            }
            removed.insert(p.name)
            let fd = FileDescriptor(owning: p.fd)
            guard p.name == Handover.storeName else {
                logger.warning(
                    "closing a stored descriptor of unknown name",
                    metadata: ["fd": "\(p.fd)", "fd.name": "\(p.name)"])
                fd.close()
                continue
            }
            let domain = (try? Socket.option(p.fd, SOL_SOCKET, SO_DOMAIN, "getsockopt(SO_DOMAIN)")) ?? -1
            let type = (try? Socket.option(p.fd, SOL_SOCKET, SO_TYPE, "getsockopt(SO_TYPE)")) ?? -1
            guard domain == AF_UNIX, type == CEchoShims_SOCK_DGRAM else {
                logger.error(
                    "closing a stored hand-over that is not an AF_UNIX datagram socket",
                    metadata: ["fd": "\(p.fd)", "socket.domain": "\(domain)", "socket.type": "\(type)"])
                fd.close()
                continue
            }
            let receipt = Handover.receive(from: p.fd, logger: logger)
            fd.close()
            logger.info(
                "took over connections from the previous echod",
                metadata: [
                    "connections": "\(receipt.connections.count)", "chunks": "\(receipt.chunks)",
                    "rejected": "\(receipt.rejected)",
                    "bytes.pending": "\(receipt.connections.reduce(0) { $0 + $1.pending.count })",
                ])
            intake.inherited += receipt.connections
        }
        for name in removed.sorted() { notifier.notify("FDSTOREREMOVE=1\nFDNAME=\(name)") }
        return intake
    }
}

extension Socket {
    /// Sets or clears `O_NONBLOCK` (a connection handed over keeps the flag its previous model
    /// set: it belongs to the open file, which both processes share).
    public static func setBlocking(_ fd: Int32, _ blocking: Bool) throws(SystemError) {
        let flags = try syscall("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        let wanted = blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK
        if wanted != flags { try syscall("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, wanted) } }
    }
}
