// The listening sockets: those the service manager passed (socket activation), or those bound
// from `Listen=`; checked, made non-blocking and close-on-exec, with TCP_NODELAY for the
// connections they accept.
import Glibc
import Logging

/// The daemon's listening sockets, and their owner: each is closed exactly once, by `close()`
/// or when the set goes away. Passed descriptors are our copies; systemd keeps its own for the
/// next activation.
final class ListenerSet {
    /// The descriptors, in `Listen=` (or `LISTEN_FDS`) order; empty once closed.
    private(set) var descriptors: [Int32] = []

    private init() {}

    deinit { close() }

    /// Closes every listener (once; later calls do nothing).
    func close() {
        for fd in descriptors { closeNoRetry(fd) }
        descriptors.removeAll()
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
            for p in passed { set.descriptors.append(try prepare(p, logger: logger)) }
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
                // Ownership moves from the FileDescriptor to this set, which closes it.
                set.descriptors.append(fd.release())
            } catch {
                let origin = configuration.origins["Server.Listen"].map { " (\($0))" } ?? ""
                throw StartupError("cannot listen on \(address)\(origin): \(error)", errno: error.errno)
            }
        }
        return set
    }

    /// Checks and prepares one passed descriptor.
    /// - Returns: its number, now owned by the set.
    private static func prepare(_ p: PassedDescriptor, logger: Logger) throws(StartupError) -> Int32 {
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
        return p.fd
    }
}
