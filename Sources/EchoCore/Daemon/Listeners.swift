// SPDX-License-Identifier: Apache-2.0
// The listening sockets: those the service manager passed (socket activation), or those bound
// from `Listen=`; checked, made non-blocking and close-on-exec, with TCP_NODELAY for the
// connections they accept.
import Glibc
import Logging

/// The daemon's listening sockets, and their owner: each is a `FileDescriptor`, closed exactly
/// once, by `close()` or when the set goes away. Passed descriptors are our copies; systemd
/// keeps its own for the next activation.
final class ListenerSet {
    /// One listening socket (a class, so that an array can hold the ~Copyable owner).
    private final class Listener {
        let descriptor: FileDescriptor
        init(_ descriptor: consuming FileDescriptor) { self.descriptor = descriptor }
    }

    private var listeners: [Listener] = []

    /// The descriptors, in `Listen=` (or `LISTEN_FDS`) order, for the model; empty once closed.
    var descriptors: [Int32] { listeners.map { $0.descriptor.rawValue } }

    private init() {}

    /// Closes every listener (once; later calls find nothing to close).
    func close() {
        listeners.removeAll()
    }

    /// Takes the passed descriptors when there are any, else binds `Listen=`.
    ///
    /// - Throws: `StartupError` for a passed descriptor that is not a listening stream socket,
    ///   for no address at all (exit status 78), or for an address that cannot be bound; the
    ///   listeners opened before the failure are closed.
    static func open(passed: [PassedDescriptor], configuration: Configuration, logger: Logger) throws(StartupError)
        -> ListenerSet
    {
        let set = ListenerSet()
        if !passed.isEmpty {
            for p in passed { set.listeners.append(Listener(try prepare(p, logger: logger))) }
            if !configuration.listen.isEmpty, configuration.origins["Server.Listen"] != nil {
                logger.debug("Listen= ignored: sockets were passed by the service manager")
            }
            return set
        }
        if configuration.listen.isEmpty {
            let at = configuration.origins["Server.Listen"].map { "\($0): " } ?? ""
            throw StartupError(
                "\(at)no Listen= address is configured and the service manager passed no sockets",
                errno: EINVAL, exitStatus: ExitStatus.config)
        }
        for address in configuration.listen {
            do {
                let fd = try Socket.listen(on: address, backlog: configuration.backlog)
                // Accepted sockets inherit TCP_NODELAY from the listener: echoes go out at once
                // without a setsockopt per connection.
                try Socket.setOption(fd.rawValue, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)")
                let bound = (try? Socket.localAddress(fd.rawValue)).flatMap { $0 } ?? address
                logger.info("listening", metadata: ["listen.address": "\(bound)", "listen.source": "config"])
                set.listeners.append(Listener(fd))
            } catch {
                let origin = configuration.origins["Server.Listen"].map { " (\($0))" } ?? ""
                throw StartupError("cannot listen on \(address)\(origin): \(error)", errno: error.errno)
            }
        }
        return set
    }

    /// Checks and prepares one passed descriptor.
    /// - Returns: its owner (a descriptor that fails the checks is left to the service manager).
    private static func prepare(_ p: PassedDescriptor, logger: Logger) throws(StartupError) -> FileDescriptor {
        let kind = Socket.kind(of: p.fd)
        guard kind == .listeningStream else {
            throw StartupError(
                "passed descriptor \(p.fd) (\(p.name)) is \(kind), not a listening stream socket; "
                    + "check ListenStream= in the socket unit",
                errno: EINVAL)
        }
        do {
            try Socket.makeNonBlockingCloseOnExec(p.fd)
            try Socket.setOption(p.fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)")
        } catch {
            throw StartupError("cannot prepare passed descriptor \(p.fd) (\(p.name)): \(error)", errno: error.errno)
        }
        let address = (try? Socket.localAddress(p.fd)).flatMap { $0 }.map { "\($0)" } ?? "unknown"
        logger.info(
            "listening",
            metadata: ["listen.address": "\(address)", "listen.source": "systemd", "listen.name": "\(p.name)"])
        return FileDescriptor(owning: p.fd)
    }
}
