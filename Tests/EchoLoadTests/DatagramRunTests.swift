// SPDX-License-Identifier: Apache-2.0
// `echoload udp` against echod's UDP echo (each model) and against deliberately wrong UDP echo
// servers: every way a datagram echo can go wrong is caught (a wrong byte, a short echo, a
// duplicate), loss is counted and fails the run unless --max-loss allows it, and reordering is
// counted without failing it.
import EchoCore
import EchoLoad
import Glibc
import Synchronization
import Testing

/// A UDP echo server on 127.0.0.1 in a thread of the test process, wrong in one chosen way.
final class FaultyDatagramServer: @unchecked Sendable {
    enum Fault: String, Sendable, CaseIterable {
        /// Flips a byte past the header of every 50th echo.
        case flipByte
        /// Echoes every 50th datagram one byte short.
        case shortEcho
        /// Echoes every 50th datagram twice.
        case duplicate
        /// Drops every 10th datagram.
        case dropTenth
        /// Holds every 20th datagram back and sends it after the next one.
        case swapPairs
    }

    let fd: Int32
    let port: UInt16
    private final class Flag: Sendable { let value = Atomic<Bool>(false) }
    private let stopping = Flag()
    private var thread: JoinableThread?

    init(_ fault: Fault) throws {
        let socketFD = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        fd = socketFD
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(socketFD, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var size: Int32 = 4 << 20
        setsockopt(socketFD, SOL_SOCKET, SO_RCVBUFFORCE, &size, 4)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socketFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socketFD, $0, &length) } }
        port = UInt16(bigEndian: bound.sin_port)
        let stopping = self.stopping
        thread = try JoinableThread(name: "faulty-udp") {
            Self.serve(socketFD, fault, stopping)
        }
    }

    var address: String { "127.0.0.1:\(port)" }

    func stop() {
        stopping.value.store(true, ordering: .relaxed)
        thread?.join()
        thread = nil
        close(fd)
    }

    private static func serve(_ fd: Int32, _ fault: Fault, _ stopping: Flag) {
        var buffer = [UInt8](repeating: 0, count: 70_000)
        var held = [UInt8]()
        var heldPeer = sockaddr_storage()
        var count = 0
        while !stopping.value.load(ordering: .relaxed) {
            var peer = sockaddr_storage()
            var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let n = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &peer) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &peerLength) }
                }
            }
            func send(_ bytes: ArraySlice<UInt8>, to address: inout sockaddr_storage) {
                _ = bytes.withUnsafeBytes { raw in
                    withUnsafePointer(to: &address) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, raw.baseAddress, raw.count, 0, $0, peerLength) }
                    }
                }
            }
            guard n > 0 else {
                // Quiet for the receive timeout: a datagram held back goes now.
                if !held.isEmpty {
                    send(held[...], to: &heldPeer)
                    held = []
                }
                continue
            }
            count += 1
            var echo = buffer[0..<n]
            switch fault {
            case .flipByte where count % 50 == 0: echo[n - 1] ^= 0x20
            case .shortEcho where count % 50 == 0: echo = echo.dropLast()
            case .duplicate where count % 50 == 0: send(echo, to: &peer)
            case .dropTenth where count % 10 == 0: continue
            case .swapPairs where count % 20 == 0:
                held = Array(echo)
                heldPeer = peer
                continue
            default: break
            }
            send(echo, to: &peer)
            if !held.isEmpty {
                send(held[...], to: &heldPeer)
                held = []
            }
        }
    }
}

@Suite(.serialized) struct EcholoadDatagrams {
    /// echod with one UDP socket on 127.0.0.1, its address read from its log.
    final class DatagramEchod {
        let dir: TempDir
        let child: Child
        let address: String

        init(model: ServerModel) throws {
            dir = try TempDir()
            let config = try dir.write(
                "echod.conf",
                "[Server]\nModel=\(model.rawValue)\nListen=127.0.0.1:0\nListenDatagram=127.0.0.1:0\nWorkers=2\nStopTimeoutSec=2\n")
            child = try Child(Binaries.echod, ["--config", config], stdoutPath: dir.file("out"), stderrPath: dir.file("err"))
            let deadline = monotonicNanoseconds() + 15_000_000_000
            while true {
                if let r = child.stderr.range(of: "listen.datagram=") {
                    let value = child.stderr[r.upperBound...].prefix { !$0.isWhitespace }
                    if value.contains(":") && child.stderr.contains("serving") {
                        address = String(value)
                        return
                    }
                }
                guard child.poll(), monotonicNanoseconds() < deadline else {
                    throw TestError.failed("echod reported no UDP address:\n\(child.stderr)")
                }
                usleep(10_000)
            }
        }

        deinit {
            child.signal(SIGTERM)
            if child.wait(seconds: 5) == nil { child.kill() }
        }
    }

    @Test("udp against echod reports consistent figures", arguments: ServerModel.allCases)
    func againstEchod(model: ServerModel) throws {
        let echod = try DatagramEchod(model: model)
        let run = try echoload(shortRun(.udp, echod.address))
        try expectConsistent(run, mode: .udp, connections: 4, size: 64, rate: 1000)
    }

    @Test("udp with datagrams of the IPv4 maximum") func largestDatagrams() throws {
        let echod = try DatagramEchod(model: .event)
        // 20/s: echod's socket buffer (net.core.rmem_default, 208 KiB here) holds three such
        // datagrams; at this rate a worker would have to stall for 150 ms to lose one.
        let run = try echoload(["udp", echod.address, "--json", "--quiet", "-c", "1", "--rate", "20/s", "--size", "65507",
                                "--duration", "1s", "--warmup", "100ms", "--drain-timeout", "2s"])
        try expectConsistent(run, mode: .udp, connections: 1, size: 65_507, rate: 20)
    }

    @Test("a wrong datagram echo fails the run", arguments: [FaultyDatagramServer.Fault.flipByte, .shortEcho, .duplicate])
    func wrongEchoIsCaught(fault: FaultyDatagramServer.Fault) throws {
        let server = try FaultyDatagramServer(fault)
        defer { server.stop() }
        let run = try echoload(shortRun(.udp, server.address) + ["--drain-timeout", "500ms"], timeout: 30)
        #expect(run.status == 1, "\(run)")
        let j = try run.json()
        #expect(value(j, "clean") == .bool(false))
        switch fault {
        case .flipByte, .shortEcho: #expect((int(j, "errors.mismatches") ?? 0) > 0, "\(run)")
        case .duplicate: #expect((int(j, "datagrams.duplicates") ?? 0) > 0 && (int(j, "errors.total") ?? 0) > 0, "\(run)")
        default: break
        }
        #expect(try schemaViolation(run.stdout) == nil)
    }

    @Test("lost datagrams fail the run unless --max-loss allows them") func lossIsCounted() throws {
        let server = try FaultyDatagramServer(.dropTenth)
        defer { server.stop() }
        let strict = try echoload(shortRun(.udp, server.address) + ["--drain-timeout", "500ms"], timeout: 30)
        #expect(strict.status == 1, "\(strict)")
        let j = try strict.json()
        let sent = int(j, "datagrams.sent") ?? 0
        let lost = int(j, "datagrams.lost") ?? 0
        #expect(sent > 0 && lost > 0 && abs(Double(lost) - Double(sent) / 10) <= 3, "\(strict)")
        #expect(int(j, "errors.total") == 0)
        let tolerant = try echoload(shortRun(.udp, server.address) + ["--drain-timeout", "500ms", "--max-loss", "20%"], timeout: 30)
        #expect(tolerant.status == 0, "\(tolerant)")
    }

    @Test("reordered echoes are counted, and are no fault") func reorderingIsCounted() throws {
        let server = try FaultyDatagramServer(.swapPairs)
        defer { server.stop() }
        let run = try echoload(shortRun(.udp, server.address, connections: 1) + ["--drain-timeout", "500ms"], timeout: 30)
        #expect(run.status == 0, "\(run)")
        let j = try run.json()
        #expect((int(j, "datagrams.reordered") ?? 0) > 0 && int(j, "datagrams.lost") == 0, "\(run)")
    }

    @Test("udp refuses what it cannot do", arguments: [
        (["--size", "15"], "--size must be between 16"), (["--processes", "2"], "drop --model and --processes"),
    ])
    func usage(extra: [String], message: String) throws {
        let run = try echoload(["udp", "127.0.0.1:7", "--rate", "10/s", "-c", "2"] + extra)
        #expect(run.status == 64 && run.stderr.contains(message), "\(run)")
    }
}
