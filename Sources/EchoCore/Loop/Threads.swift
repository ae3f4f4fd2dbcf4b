// SPDX-License-Identifier: Apache-2.0

import CEchoShims
import Glibc

/// A started POSIX thread that can be joined.
///
/// Threads are started from a nonisolated function with the body boxed through `Unmanaged`:
/// a closure literal from top-level code handed straight to `pthread_create` crashes at run
/// time under Swift 6's isolation checks.
public struct JoinableThread: Sendable {
    private let thread: pthread_t

    private final class Box: @unchecked Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Starts `body` on a new thread named `name` (visible in `top -H` and /proc/PID/task/*/comm).
    ///
    /// - Parameters:
    ///   - name: thread name, at most 15 bytes kept.
    ///   - stackSize: stack size in bytes, or nil for the default.
    ///   - body: what the thread runs.
    /// - Throws: `SystemError` from `pthread_create` (EAGAIN: out of threads or RLIMIT_NPROC).
    public init(name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        thread = try Self.create(name: name, stackSize: stackSize, detached: false, body)
    }

    /// Starts `body` on a detached thread (its resources go back to the system when it ends).
    ///
    /// - Throws: `SystemError` from `pthread_create` (EAGAIN: out of threads or RLIMIT_NPROC).
    public static func detach(
        name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void
    ) throws(SystemError) {
        _ = try create(name: name, stackSize: stackSize, detached: true, body)
    }

    private static func create(
        name: String, stackSize: Int?, detached: Bool, _ body: @escaping @Sendable () -> Void
    ) throws(SystemError) -> pthread_t {
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        defer { pthread_attr_destroy(&attr) }
        if detached { pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED)) }
        if let stackSize {
            let rc = pthread_attr_setstacksize(&attr, stackSize)
            if rc != 0 { throw SystemError("pthread_attr_setstacksize", errno: rc) }
        }
        let box = Unmanaged.passRetained(Box(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, &attr, threadMain, box)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemError("pthread_create", errno: rc)
        }
        return thread
    }

    /// Waits for the thread to finish.
    public func join() {
        pthread_join(thread, nil)
    }

    fileprivate static func run(_ raw: UnsafeMutableRawPointer) {
        let box = Unmanaged<Box>.fromOpaque(raw).takeRetainedValue()
        box.name.withCString { CEchoShims_set_thread_name($0) }
        box.body()
    }
}

private func threadMain(_ raw: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    JoinableThread.run(raw!)
    return nil
}
