// SPDX-License-Identifier: Apache-2.0
// The event model's worker pool, in process, on real loopback sockets.
import Glibc
import Logging
import Testing

@testable import EchoCore

/// A pool over one loopback listener, stopped and joined at the end of the scope.
func withPool(
    workers: Int = 2, maxConnections: Int = 1000,
    _ body: (WorkerPool, SocketAddress) throws -> Void
) throws {
    let (listener, address) = try makeLoopbackListener()
    defer { closeNoRetry(listener) }
    let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
    let pool = try WorkerPool(listeners: [listener], workerCount: workers, maxConnections: maxConnections, logger: logger)
    try pool.start()
    defer {
        pool.stop(deadline: monotonicNanoseconds() + 2_000_000_000)
        pool.join()
    }
    try body(pool, address)
}

@Suite struct WorkerPoolTests {
    @Test(arguments: [1, 100, 65536, 65537, 1 << 20])
    func echoesByteExact(size: Int) throws {
        try withPool { _, address in
            let client = try TestClient(connectingTo: address)
            let payload = patterned(size, seed: UInt64(size))
            // Write from a second thread: a payload larger than the socket buffers would
            // otherwise deadlock a single-threaded client.
            let fd = client.fd
            let writer = try JoinableThread(name: "writer") { sendAllIgnoringErrors(fd: fd, payload) }
            let echoed = try client.receive(exactly: size)
            writer.join()
            #expect(echoed == payload)
        }
    }

    @Test func halfCloseEchoesEverythingThenCloses() throws {
        try withPool { _, address in
            let client = try TestClient(connectingTo: address)
            let payload = patterned(10_000, seed: 1)
            try client.sendAll(payload)
            client.shutdownWrite()
            #expect(try client.receiveUntilEOF() == payload)
        }
    }

    @Test func countsAcceptedOpenAndEchoedBytes() throws {
        try withPool { pool, address in
            var clients: [TestClient] = []
            for i in 0..<10 {
                let c = try TestClient(connectingTo: address)
                try c.sendAll(patterned(100, seed: UInt64(i)))
                _ = try c.receive(exactly: 100)
                clients.append(c)
            }
            #expect(eventually { pool.snapshot().open == 10 && pool.snapshot().bytesEchoed == 1000 })
            #expect(pool.snapshot().accepted == 10)
            clients.removeAll()
            #expect(eventually { pool.snapshot().open == 0 })
        }
    }

    /// At the limit the pool stops accepting; the extra connection waits in the backlog and is
    /// served as soon as a slot frees.
    @Test func maxConnectionsHoldsAndExcessIsServedLater() throws {
        try withPool(workers: 2, maxConnections: 3) { pool, address in
            var served: [TestClient] = []
            for i in 0..<3 {
                let c = try TestClient(connectingTo: address)
                try c.sendAll([UInt8(i)])
                #expect(try c.receive(exactly: 1) == [UInt8(i)])
                served.append(c)
            }
            let waiting = try TestClient(connectingTo: address)  // completes in the kernel backlog
            try waiting.sendAll([42])
            #expect(waiting.isSilent(milliseconds: 300), "a fourth connection must not be served at MaxConnections=3")
            #expect(pool.snapshot().open == 3)
            served.removeFirst()  // closes one
            #expect(try waiting.receive(exactly: 1) == [42])
            #expect(eventually { pool.snapshot().open == 3 })
        }
    }

    @Test func raisingTheLimitLiveResumesAccepting() throws {
        try withPool(workers: 1, maxConnections: 1) { pool, address in
            let first = try TestClient(connectingTo: address)
            try first.sendAll([1])
            _ = try first.receive(exactly: 1)
            let second = try TestClient(connectingTo: address)
            try second.sendAll([2])
            #expect(second.isSilent(milliseconds: 200))
            pool.setMaxConnections(2)
            #expect(try second.receive(exactly: 1) == [2])
        }
    }

    /// A stop echoes what a client had sent, then closes its write side.
    @Test func stopEchoesWhatWasReceivedThenSendsEOF() throws {
        let (listener, address) = try makeLoopbackListener()
        defer { closeNoRetry(listener) }
        let pool = try WorkerPool(
            listeners: [listener], workerCount: 2, maxConnections: 100,
            logger: Logger(label: "t") { _ in SwiftLogNoOpLogHandler() })
        try pool.start()
        let client = try TestClient(connectingTo: address)
        let idle = try TestClient(connectingTo: address)
        let payload = patterned(200_000, seed: 9)
        try client.sendAll(Array(payload[0..<1000]))
        _ = try client.receive(exactly: 1000)
        #expect(eventually { pool.snapshot().open == 2 })
        // Bytes sent just before the stop must come back before the EOF.
        let tail = Array(payload[1000..<5000])
        try client.sendAll(tail)
        pool.stop(deadline: monotonicNanoseconds() + 5_000_000_000)
        #expect(try client.receiveUntilEOF() == tail)
        #expect(try idle.receiveUntilEOF() == [])
        // Lingering ends when the peers close.
        client.shutdownWrite()
        idle.shutdownWrite()
        pool.join()
        #expect(pool.snapshot().open == 0)
    }

    @Test func stopDeadlineClosesPeersThatNeverClose() throws {
        let (listener, address) = try makeLoopbackListener()
        defer { closeNoRetry(listener) }
        let pool = try WorkerPool(
            listeners: [listener], workerCount: 1, maxConnections: 100,
            logger: Logger(label: "t") { _ in SwiftLogNoOpLogHandler() })
        try pool.start()
        let client = try TestClient(connectingTo: address)
        try client.sendAll([1])
        _ = try client.receive(exactly: 1)
        let start = monotonicNanoseconds()
        pool.stop(deadline: start + 300_000_000)
        pool.join()  // the client never closes: the deadline must end the wait
        let took = monotonicNanoseconds() - start
        #expect(took >= 250_000_000 && took < 3_000_000_000)
        #expect(pool.snapshot().open == 0)
    }

    /// Connections stay on the worker that accepted them: each worker's open count is only
    /// ever its own, and the totals add up.
    @Test func perWorkerCountsAddUp() throws {
        try withPool(workers: 2) { pool, address in
            var clients: [TestClient] = []
            for _ in 0..<50 { clients.append(try TestClient(connectingTo: address)) }
            for (i, c) in clients.enumerated() {
                try c.sendAll([UInt8(i)])
                #expect(try c.receive(exactly: 1) == [UInt8(i)])
            }
            #expect(eventually { pool.counters.map { $0.open.load(ordering: .relaxed) }.reduce(0, +) == 50 })
            let accepted = pool.counters.map { $0.accepted.load(ordering: .relaxed) }
            let open = pool.counters.map { $0.open.load(ordering: .relaxed) }
            #expect(accepted.map(Int.init) == open)
        }
    }

    @Test func heartbeatsAdvanceWhileIdle() throws {
        try withPool(workers: 2) { pool, _ in
            let before = pool.heartbeats()
            #expect(eventually(timeoutSeconds: 3) { zip(pool.heartbeats(), before).allSatisfy { $0 > $1 } })
        }
    }
}
