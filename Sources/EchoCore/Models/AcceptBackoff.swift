import Glibc
import Logging

/// The accept loop of the models that accept on the control thread (thread and fork), with its
/// back-off: after a resource error (EMFILE, ENFILE, ENOMEM, EAGAIN from pthread_create or fork)
/// accepting pauses for a second instead of spinning, and connections wait in the backlog.
struct AcceptBackoff {
    /// CLOCK_MONOTONIC nanoseconds when accepting may resume, while paused.
    private(set) var until: Int64? = nil
    /// Pauses so far.
    private(set) var count: UInt64 = 0
    private var lastWarning: Int64 = 0
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    var isActive: Bool { until != nil }

    /// Nanoseconds until the pause ends, for the control loop's timeout; nil when not paused.
    var remaining: Int64? { until.map { max(0, $0 - monotonicNanoseconds()) } }

    /// Pauses accepting for a second, logging at most one warning a second.
    mutating func pause(_ message: Logger.Message, _ error: SystemError) {
        count &+= 1
        let now = monotonicNanoseconds()
        until = now + 1_000_000_000
        if now - lastWarning >= 1_000_000_000 {
            lastWarning = now
            logger.warning(message, metadata: ["error": "\(error)"])
        }
    }

    /// Ends the pause once its time has come.
    mutating func expire(now: Int64) {
        if let until, now >= until { self.until = nil }
    }

    /// What a connection handler reports when it could not take the connection for lack of a
    /// resource: accepting pauses, with this message.
    struct HandlerFailure: Error {
        let message: Logger.Message
        let error: SystemError
    }

    /// Accepts blocking, close-on-exec connections from `listener` while `shouldAccept()` holds
    /// and the queue is not empty, handing each to `handle`. Errors that concern one connection
    /// are skipped; others, and a `HandlerFailure`, pause accepting.
    mutating func acceptConnections(
        from listener: Int32, while shouldAccept: () -> Bool, _ handle: (Int32) throws(HandlerFailure) -> Void
    ) {
        while !isActive && shouldAccept() {
            let result: IOResult<Int32>
            do {
                result = try Socket.acceptBlocking(listener)
            } catch {
                if Socket.isTransientAcceptError(error.errno) { continue }
                pause("accept failed; pausing accepts for 1s", error)
                return
            }
            guard case .processed(let fd) = result else { return }
            do {
                try handle(fd)
            } catch {
                pause(error.message, error.error)
                return
            }
        }
    }
}
