// SPDX-License-Identifier: Apache-2.0
// The restart hand-over between models, in process: one model hands its connections over on a
// real channel, another takes them (another model, as after a Model= change), and every client
// gets every byte back in order: bytes still unread in the kernel, and bytes the first model had
// read but not yet echoed (its pending rest) alike.
import CEchoShims
import Glibc
import Logging
import Testing

@testable import EchoCore

private let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// Runs `body` with SIGUSR2 unblocked in this thread: the test runner's threads block almost
/// every signal, and the thread model's connection threads inherit the mask of the thread that
/// starts them, so its stop (and hand-over) signal would never arrive. echod's control thread
/// blocks only the signals it reads from its signalfd.
private func withInterruptSignal<R>(_ body: () throws -> R) rethrows -> R {
    Signals.unblock([ThreadModel.interruptSignal])
    defer { Signals.block([ThreadModel.interruptSignal]) }
    return try body()
}

/// A model built and started on `listener` with the connections taken over.
private func startModel(
    _ kind: ConcurrencyModel, listener: Int32, inherited: [InheritedConnection] = []
) throws -> ServingModel {
    var configuration = Configuration()
    configuration.model = kind
    configuration.workers = 2
    let context = ModelContext(listeners: [listener], maxConnections: 1000, logger: quiet, inherited: inherited)
    let model = try kind.servingModel.init(configuration: configuration, context: context)
    try model.start()
    return model
}

/// Turns a thread model's control loop (accepting, stop rounds) until `done`, as the daemon does.
private func turn(_ model: ServingModel, listener: Int32, until done: () -> Bool) -> Bool {
    eventually(timeoutSeconds: 10) {
        if let controlled = model as? ControlLoopModel {
            var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            if controlled.controlDescriptors.contains(listener), poll(&pfd, 1, 0) > 0 {
                controlled.controlDescriptorReadable(listener)
            }
            controlled.tick(now: monotonicNanoseconds())
        }
        return done()
    }
}

/// Hands `model`'s connections over and returns what a successor receives.
private func handOver(_ model: ServingModel, listener: Int32) throws -> [InheritedConnection] {
    let channel = try HandoverChannel()
    #expect(model.beginHandover(sender: channel.sender.rawValue, deadline: monotonicNanoseconds() + 5_000_000_000))
    #expect(turn(model, listener: listener) { model.isStopped })
    let receipt = Handover.receive(from: channel.receiver.rawValue, logger: quiet)
    #expect(receipt.rejected == 0)
    #expect(receipt.connections.count == model.handedOver)
    return receipt.connections
}

/// Stops a model whose clients have gone.
private func stop(_ model: ServingModel, listener: Int32) {
    model.beginStop(deadline: monotonicNanoseconds() + 2_000_000_000)
    #expect(turn(model, listener: listener) { model.isStopped })
}

@Suite(.serialized) struct HandoverModelTests {
    /// Connections handed over between every pair of the event and thread models keep
    /// echoing; what the clients sent while no process read (between the hand-over and the
    /// successor's start) comes back first.
    @Test(arguments: [(ConcurrencyModel.event, ConcurrencyModel.thread), (.thread, .event), (.event, .event), (.thread, .thread)])
    func connectionsKeepEchoingUnderTheNextModel(from: ConcurrencyModel, to: ConcurrencyModel) throws {
        try withInterruptSignal { try keepEchoing(from: from, to: to) }
    }

    private func keepEchoing(from: ConcurrencyModel, to: ConcurrencyModel) throws {
        let (listener, address) = try makeLoopbackListener()
        defer { closeNoRetry(listener) }
        let first = try startModel(from, listener: listener)
        var clients: [TestClient] = []
        for i in 0..<20 {
            let c = try TestClient(connectingTo: address)
            clients.append(c)
            let hello = patterned(100, seed: UInt64(i))
            try c.sendAll(hello)
            var echoed: [UInt8] = []
            #expect(turn(first, listener: listener) { c.isSilent(milliseconds: 1) == false })
            echoed = try c.receive(exactly: 100)
            #expect(echoed == hello)
        }
        let inherited = try handOver(first, listener: listener)
        try #require(inherited.count == 20)
        // Nobody reads now: these wait in the kernel for the successor.
        for (i, c) in clients.enumerated() { try c.sendAll(patterned(3000, seed: 1000 + UInt64(i))) }
        let second = try startModel(to, listener: listener, inherited: inherited)
        for (i, c) in clients.enumerated() {
            #expect(try c.receive(exactly: 3000) == patterned(3000, seed: 1000 + UInt64(i)), "client \(i)")
            let more = patterned(5000, seed: 2000 + UInt64(i))
            try c.sendAll(more)
            #expect(try c.receive(exactly: 5000) == more, "client \(i)")
        }
        clients.removeAll()
        stop(second, listener: listener)
    }

    /// A client that sends a lot without reading leaves the first model with bytes read and not
    /// yet echoed (a short send: the event model's pending rest, the thread model's rest of a
    /// blocked send); they travel in the state memfd and the successor sends them first: the
    /// client reads back exactly what it sent, in order.
    @Test(arguments: [(ConcurrencyModel.event, ConcurrencyModel.event), (.thread, .event), (.event, .thread)])
    func bytesReadButNotEchoedAreCarriedOver(from: ConcurrencyModel, to: ConcurrencyModel) throws {
        try withInterruptSignal { try carryOver(from: from, to: to) }
    }

    private func carryOver(from: ConcurrencyModel, to: ConcurrencyModel) throws {
        let (listener, address) = try makeLoopbackListener()
        defer { closeNoRetry(listener) }
        // Small buffers both ways (accepted sockets inherit the listener's SO_SNDBUF), so the
        // server's sends come back short while the client does not read.
        try Socket.setOption(listener, SOL_SOCKET, SO_SNDBUF, 16 * 1024, "setsockopt(SO_SNDBUF)")
        let first = try startModel(from, listener: listener)
        let client = try TestClient(connectingTo: address, timeoutSeconds: 10)
        try Socket.setOption(client.fd, SOL_SOCKET, SO_RCVBUF, 8 * 1024, "setsockopt(SO_RCVBUF)")
        let payload = patterned(256 << 10, seed: 42)
        let fd = client.fd
        let writer = try JoinableThread(name: "writer") { sendAllIgnoringErrors(fd: fd, payload) }
        // Wait until the first model has echoed some (so it serves the connection), then give
        // it time to fill the client's window and get stuck on a short send (the assertion on
        // `pending` below says whether it did).
        #expect(turn(first, listener: listener) { !client.isSilent(milliseconds: 1) })
        let settled = monotonicNanoseconds() + 300_000_000
        #expect(turn(first, listener: listener) { monotonicNanoseconds() >= settled })
        let inherited = try handOver(first, listener: listener)
        try #require(inherited.count == 1)
        #expect(!inherited[0].pending.isEmpty, "the first model had nothing pending: the test did not reach its case")
        let second = try startModel(to, listener: listener, inherited: inherited)
        let echoed = try client.receive(exactly: payload.count)
        writer.join()
        #expect(echoed == payload)
        client.shutdownWrite()
        #expect(try client.receiveUntilEOF().isEmpty)
        stop(second, listener: listener)
    }
}
