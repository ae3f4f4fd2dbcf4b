// SPDX-License-Identifier: Apache-2.0

import Glibc
import Logging

/// The pause after a resource error (EMFILE, ENFILE, ENOMEM, EAGAIN from pthread_create or
/// fork): accepting stops for a second instead of spinning, and connections wait in the kernel's
/// backlog. The event model's workers keep one each; the thread and fork models' accept loop on
/// the control thread (`acceptConnections`) is built on it.
struct AcceptBackoff {
    /// CLOCK_MONOTONIC nanoseconds when accepting may resume, while paused.
    private(set) var until: Int64? = nil
    /// Pauses so far.
    private(set) var count: UInt64 = 0
    private var warning = RateLimitedWarning()
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
        until = monotonicNanoseconds() + 1_000_000_000
        warning.warn(logger, message, metadata: ["error": "\(error)"])
    }

    /// Ends the pause once its time has come.
    /// - Returns: true when the pause ended now.
    @discardableResult
    mutating func expire(now: Int64) -> Bool {
        guard let until, now >= until else { return false }
        self.until = nil
        return true
    }

    /// What a connection handler reports when it could not take the connection for lack of a
    /// resource: accepting pauses, with this message.
    struct HandlerFailure: Error {
        let message: Logger.Message
        let error: SystemError
    }

    /// Accepts blocking, close-on-exec connections from `listener` while `shouldAccept()` holds
    /// and the queue is not empty, admits each through the per-source table `sources` (a
    /// refused one is closed at once, counted by the table) and hands it to `handle` with its
    /// ticket; `handle` owns both from then on (also when it throws: it releases the ticket).
    /// Errors that concern one connection are skipped; others, and a `HandlerFailure`, pause
    /// accepting.
    mutating func acceptConnections(
        from listener: Int32, sources: SourceTable?, while shouldAccept: () -> Bool,
        _ handle: (consuming FileDescriptor, SourceTicket) throws(HandlerFailure) -> Void
    ) {
        var peer = sockaddr_storage()
        while !isActive && shouldAccept() {
            let result: IOResult<Int32>
            do {
                result = try withUnsafeMutablePointer(to: &peer) { (peer) throws(SystemError) in
                    try Socket.acceptBlocking(listener, peer: sources == nil ? nil : peer)
                }
            } catch {
                if Socket.isTransientAcceptError(error.errno) { continue }
                pause("accept failed; pausing accepts for 1s", error)
                return
            }
            guard case .processed(let fd) = result else { return }
            var ticket = SourceTicket.untracked
            if let sources {
                switch withUnsafePointer(to: &peer, { sources.admit(peer: $0, now: monotonicNanoseconds()) }) {
                case .admitted(let admitted):
                    ticket = admitted
                case .refused:
                    closeNoRetry(fd)
                    continue
                }
            }
            do {
                try handle(FileDescriptor(owning: fd), ticket)
            } catch {
                pause(error.message, error.error)
                return
            }
        }
    }
}
