// SPDX-License-Identifier: Apache-2.0
// The listening sockets: those the service manager passed (socket activation), or those bound
// from `Listen=` and `ListenDatagram=`; checked, made non-blocking and close-on-exec, with
// TCP_NODELAY for the connections the stream ones accept. Passed sockets are told apart by their
// type (SO_TYPE), not their name: a socket unit's FileDescriptorName= names all of them alike.
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
    private var datagramListeners: [Listener] = []

    /// The stream listeners, in `Listen=` (or `LISTEN_FDS`) order, for the model; empty once closed.
    var descriptors: [Int32] { listeners.map { $0.descriptor.rawValue } }

    /// The UDP sockets, in `ListenDatagram=` (or `LISTEN_FDS`) order; empty once closed.
    var datagramDescriptors: [Int32] { datagramListeners.map { $0.descriptor.rawValue } }

    /// The local ports of every listener, stream and datagram: the UDP echo drops datagrams from
    /// them (another echo service on one of echod's ports, such as a second echod, would bounce
    /// each echo back for ever).
    var localPorts: [UInt16] {
        (listeners + datagramListeners).compactMap { (try? Socket.localAddress($0.descriptor.rawValue))??.port }
    }

    private init() {}

    /// Closes every listener (once; later calls find nothing to close).
    func close() {
        listeners.removeAll()
        datagramListeners.removeAll()
    }

    /// Takes the passed descriptors when there are any, else binds `Listen=` and `ListenDatagram=`.
    ///
    /// - Throws: `StartupError` for a passed descriptor that is neither a listening stream socket
    ///   nor an IPv4/IPv6 datagram socket, for no address at all (exit status 78), or for an
    ///   address that cannot be bound; the listeners opened before the failure are closed.
    static func open(passed: [PassedDescriptor], configuration: Configuration, logger: Logger) throws(StartupError)
        -> ListenerSet
    {
        let set = ListenerSet()
        if !passed.isEmpty {
            for p in passed {
                if try prepare(p, logger: logger) == .datagram {
                    set.datagramListeners.append(Listener(FileDescriptor(owning: p.fd)))
                } else {
                    set.listeners.append(Listener(FileDescriptor(owning: p.fd)))
                }
            }
            if configuration.origins["Server.Listen"] != nil || configuration.origins["Server.ListenDatagram"] != nil {
                logger.debug("Listen= and ListenDatagram= ignored: sockets were passed by the service manager")
            }
            return set
        }
        if configuration.listen.isEmpty && configuration.listenDatagram.isEmpty {
            let at = configuration.origins["Server.Listen"].map { "\($0): " } ?? ""
            throw StartupError(
                "\(at)no Listen= or ListenDatagram= address is configured and the service manager passed no sockets",
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
        for address in configuration.listenDatagram {
            do {
                let fd = try Socket.bindDatagram(on: address)
                let bound = (try? Socket.localAddress(fd.rawValue)).flatMap { $0 } ?? address
                logger.info(
                    "listening", metadata: ["listen.datagram": "\(bound)", "listen.source": "config"])
                set.datagramListeners.append(Listener(fd))
            } catch {
                let origin = configuration.origins["Server.ListenDatagram"].map { " (\($0))" } ?? ""
                throw StartupError("cannot bind UDP \(address)\(origin): \(error)", errno: error.errno)
            }
        }
        return set
    }

    /// Checks and prepares one passed descriptor.
    /// - Returns: its kind, `.listeningStream` or `.datagram`; the caller takes ownership (a
    ///   descriptor that fails the checks is left to the service manager).
    private static func prepare(_ p: PassedDescriptor, logger: Logger) throws(StartupError) -> Socket.Kind {
        let kind = Socket.kind(of: p.fd)
        guard kind == .listeningStream || kind == .datagram else {
            throw StartupError(
                "passed descriptor \(p.fd) (\(p.name)) is \(kind), neither a listening stream socket nor "
                    + "a UDP socket; check ListenStream= and ListenDatagram= in the socket unit",
                errno: EINVAL)
        }
        do {
            try Socket.makeNonBlockingCloseOnExec(p.fd)
            if kind == .listeningStream {
                try Socket.setOption(p.fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)")
            }
        } catch {
            throw StartupError("cannot prepare passed descriptor \(p.fd) (\(p.name)): \(error)", errno: error.errno)
        }
        let address = (try? Socket.localAddress(p.fd)).flatMap { $0 }.map { "\($0)" } ?? "unknown"
        logger.info(
            "listening",
            metadata: [
                kind == .datagram ? "listen.datagram" : "listen.address": "\(address)", "listen.source": "systemd",
                "listen.name": "\(p.name)",
            ])
        return kind
    }
}
