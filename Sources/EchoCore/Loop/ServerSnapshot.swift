// SPDX-License-Identifier: Apache-2.0
/// Totals of a serving model at one moment, for `STATUS=` and logs.
public struct ServerSnapshot: Equatable, Sendable {
    /// Connections accepted since start.
    public var accepted: UInt64 = 0
    /// Connections open now.
    public var open: Int = 0
    /// Bytes written back to clients since start (the fork model's children report in batches).
    public var bytesEchoed: UInt64 = 0
    /// Times accepting paused after a resource error (EMFILE, EAGAIN from pthread_create/fork).
    public var acceptBackoffs: UInt64 = 0
    public init() {}
}
