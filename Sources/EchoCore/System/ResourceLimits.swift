// SPDX-License-Identifier: Apache-2.0

import CEchoShims
import Glibc

/// A soft/hard pair as `getrlimit(2)` reports it. `RLIM_INFINITY` is `UInt64.max`.
public struct ResourceLimit: Equatable, Sendable, CustomStringConvertible {
    public var soft: UInt64
    public var hard: UInt64

    public init(soft: UInt64, hard: UInt64) {
        self.soft = soft
        self.hard = hard
    }

    public var description: String { "soft=\(Self.format(soft)) hard=\(Self.format(hard))" }

    /// `infinity` for RLIM_INFINITY, else the number.
    public static func format(_ v: UInt64) -> String { v == UInt64.max ? "infinity" : String(v) }
}

/// Reading and setting the calling process's resource limits.
public enum ResourceLimits {
    /// `RLIMIT_NOFILE`: open descriptors.
    public static let noFile = CEchoShims_RLIMIT_NOFILE
    /// `RLIMIT_NPROC`: processes and threads of the user.
    public static let nProc = CEchoShims_RLIMIT_NPROC
    /// `RLIMIT_CORE`: core dump size.
    public static let core = CEchoShims_RLIMIT_CORE
    /// `RLIMIT_STACK`: main thread stack size.
    public static let stack = CEchoShims_RLIMIT_STACK

    /// The current limits of `resource`. The corresponding C function is `prlimit(2)`.
    public static func get(_ resource: Int32, pid: pid_t = 0) throws(SystemError) -> ResourceLimit {
        var old = rlimit()
        try syscall("prlimit(get)") { CEchoShims_prlimit(pid, resource, nil, &old) }
        return ResourceLimit(soft: UInt64(old.rlim_cur), hard: UInt64(old.rlim_max))
    }

    /// Sets the limits of `resource`. The corresponding C function is `prlimit(2)`.
    public static func set(_ resource: Int32, _ limit: ResourceLimit, pid: pid_t = 0) throws(SystemError) {
        var new = rlimit(rlim_cur: rlim_t(limit.soft), rlim_max: rlim_t(limit.hard))
        try syscall("prlimit(set)") { CEchoShims_prlimit(pid, resource, &new, nil) }
    }
}
