// SPDX-License-Identifier: Apache-2.0
// How echod ends when it cannot start or stop cleanly: the exit statuses it uses, and the error
// that carries a start-up failure (with its errno for the service manager) to the executable.

/// Exit statuses from sysexits.h that echod uses.
public enum ExitStatus {
    public static let success: Int32 = 0
    /// A runtime failure (a socket that cannot be bound, threads that cannot start).
    public static let failure: Int32 = 1
    /// EX_CONFIG: the configuration is wrong.
    public static let config: Int32 = 78
}

/// A start-up failure: what went wrong, the errno if one applies, and the exit status.
public struct StartupError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var errno: Int32?
    public var exitStatus: Int32

    public init(_ message: String, errno: Int32? = nil, exitStatus: Int32 = ExitStatus.failure) {
        self.message = message
        self.errno = errno
        self.exitStatus = exitStatus
    }

    public var description: String { message }

    /// The service manager's account of the failure: `STATUS=Failed to start: …`, and `ERRNO=`
    /// when one applies.
    var notification: String {
        "STATUS=Failed to start: \(message)" + (errno.map { "\nERRNO=\($0)" } ?? "")
    }
}
