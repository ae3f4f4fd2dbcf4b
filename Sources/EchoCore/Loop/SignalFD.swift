// SPDX-License-Identifier: Apache-2.0
// signalfd(2): signals delivered as readable events to the daemon's control loop, instead of
// asynchronous handlers.
import CEchoShims
import Glibc

/// A signalfd delivering the given signals as readable events. The signals must already be
/// blocked in every thread (see `Signals.block(_:)`). The corresponding C function is
/// `signalfd(2)`.
public struct SignalFD: ~Copyable {
    public let descriptor: FileDescriptor

    /// - Parameter signals: the signals to receive.
    public init(_ signals: [Int32]) throws(SystemError) {
        var mask = Signals.set(signals)
        let fd = try syscall("signalfd") { signalfd(-1, &mask, Int32(SFD_NONBLOCK) | Int32(SFD_CLOEXEC)) }
        descriptor = FileDescriptor(owning: fd)
    }

    /// A delivered signal: its number and the process that sent it (for SIGCHLD, the child).
    public struct Delivery: Equatable, Sendable {
        public var signal: Int32
        public var pid: pid_t
    }

    /// Reads one pending signal.
    /// - Returns: the signal number, or nil when none is pending.
    public func next() throws(SystemError) -> Int32? {
        try nextDelivery()?.signal
    }

    /// Reads one pending signal with its sender.
    /// - Returns: the delivery, or nil when none is pending.
    public func nextDelivery() throws(SystemError) -> Delivery? {
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        switch try syscallNonBlocking("read(signalfd)", { Glibc.read(descriptor.rawValue, &info, size) }) {
        case .wouldBlock: return nil
        case .processed(let n):
            precondition(n == size, "short read from signalfd")
            return Delivery(signal: Int32(bitPattern: info.ssi_signo), pid: pid_t(bitPattern: info.ssi_pid))
        }
    }
}
