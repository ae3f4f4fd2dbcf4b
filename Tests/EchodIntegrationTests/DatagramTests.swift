// SPDX-License-Identifier: Apache-2.0
// RFC 862 over UDP, and what makes it safe to leave on: every datagram comes back whole and
// byte-exact, in every model, over IPv4 and IPv6; truncated ones are dropped; datagrams from
// reflecting services' ports and from echod's own ports are dropped (two echods cannot be made
// to bounce a datagram between them); the output cap holds. Counters are read from STATUS=.
import CEchoShims
import Foundation
import Glibc
import Testing

extension EchodIntegration {
    @Suite struct Datagrams {
        /// Source ports whose datagrams echod must drop (issue 16 item 3, and the other services
        /// that answer datagrams: see DatagramPolicy.reflectorPorts).
        static let reflectorPorts: [UInt16] = [
            7, 13, 17, 19, 37, 53, 69, 111, 123, 137, 138, 161, 162, 389, 520, 1900, 3702, 5353, 11211,
        ]

        static func config(model: String = "event", udp: [String] = ["127.0.0.1:0", "[::1]:0"], extra: String = "") -> String {
            Echod.config(
                model: model, listen: ["127.0.0.1:0"],
                extra: "[Server]\n" + udp.map { "ListenDatagram=\($0)\n" }.joined() + extra)
        }

        /// Datagrams from 1 byte to the IPv4 maximum come back whole and byte-exact.
        @Test(arguments: servingModels)
        func datagramsComeBackWholeAndExact(model: String) throws {
            try withEchod(config: Self.config(model: model), activation: .listen) { server in
                let endpoints = server.datagramEndpoints
                try #require(endpoints.count == 2, "\(server.describeState())")
                for (host, port) in endpoints {
                    let client = try UDPClient(host)
                    for size in [1, 2, 63, 64, 1400, 1472, 1473, 9000, 32_768, 65_506, 65_507] {
                        let payload = Pattern.bytes(seed: UInt64(size) &+ UInt64(port), count: size)
                        try client.send(payload, to: port)
                        let echo = try client.receive(timeout: .seconds(5))
                        #expect(echo.map { describeMismatch(received: $0, expected: payload) } == .some(nil),
                                "\(model) \(host) \(size) bytes: \(echo.map { "\($0.count) bytes" } ?? "no echo")")
                    }
                }
                let counters = try server.udpCounters { $0["echoed"] == 22 }
                #expect(counters?["echoed"] == 22 && counters?["received"] == 22, "\(String(describing: counters))")
            }
        }

        /// An IPv6 datagram one byte past 65,507 does not fit the buffer: it is dropped and
        /// counted, never echoed cut.
        @Test func truncatedDatagramIsDropped() throws {
            try withEchod(config: Self.config(udp: ["[::1]:0"]), activation: .listen) { server in
                let port = try #require(server.datagramEndpoints.first?.port, "\(server.describeState())")
                let client = try UDPClient(.v6)
                try client.send(Pattern.bytes(seed: 1, count: 65_508), to: port)
                let whole = Pattern.bytes(seed: 2, count: 65_507)
                try client.send(whole, to: port)
                let echo = try client.receive(timeout: .seconds(5))
                #expect(echo.map { describeMismatch(received: $0, expected: whole) } == .some(nil),
                        "the 65,507-byte datagram: \(echo?.count ?? -1) bytes back")
                let counters = try server.udpCounters { $0["truncated"] == 1 }
                #expect(counters?["truncated"] == 1 && counters?["echoed"] == 1, "\(String(describing: counters))")
                #expect(try client.receive(timeout: .milliseconds(200)) == nil, "a truncated datagram came back")
            }
        }

        /// A datagram from any reflecting service's port (real sockets bound there; port 0
        /// forged through a raw socket) gets no answer, and each is counted; a datagram from an
        /// ordinary port sent after them is echoed.
        @Test func reflectorSourcePortsAreDropped() throws {
            try withEchod(config: Self.config(udp: ["127.0.0.1:0"]), activation: .listen) { server in
                let port = try #require(server.datagramEndpoints.first?.port, "\(server.describeState())")
                var clients: [UDPClient] = []
                for source in Self.reflectorPorts {
                    let client = try UDPClient(.v4, port: source)
                    try client.send(Array("from \(source)".utf8), to: port)
                    clients.append(client)
                }
                try sendSpoofedDatagram(from: "127.0.0.1", port: 0, to: "127.0.0.1", port: port, payload: Array("from 0".utf8))
                let ordinary = try UDPClient(.v4)
                try ordinary.send([1, 2, 3], to: port)
                #expect(try ordinary.receive(timeout: .seconds(5)) == [1, 2, 3])
                let expected = UInt64(Self.reflectorPorts.count + 1)
                let counters = try server.udpCounters { $0["reflector-port"] == expected && $0["echoed"] == 1 }
                #expect(counters?["reflector-port"] == expected && counters?["echoed"] == 1, "\(String(describing: counters))")
                for (client, source) in zip(clients, Self.reflectorPorts) {
                    #expect(client.drain().datagrams == 0, "a datagram from port \(source) was echoed")
                }
                // Logged, but rate-limited: at most one line a second per worker (two here), not
                // one per dropped datagram.
                let logged = server.child.stderrText.components(separatedBy: "UDP datagram dropped").count - 1
                #expect(logged >= 1 && logged <= 2, "\(logged) drop lines for \(expected) drops")
            }
        }

        /// Two echods on the same port of two addresses (as two hosts running echo on port 7),
        /// and one datagram forged from B's socket to A: A drops it (it comes from one of its own
        /// ports), so nothing bounces between them.
        @Test(arguments: servingModels)
        func twoEchodsPointedAtEachOtherDoNotLoop(model: String) throws {
            let port = try probeFreePort()
            try withEchod(config: Self.config(model: model, udp: ["127.0.0.1:\(port)"]), activation: .listen) { a in
                try withEchod(config: Self.config(model: model, udp: ["127.0.0.2:\(port)"]), activation: .listen) { b in
                    try sendSpoofedDatagram(from: "127.0.0.2", port: port, to: "127.0.0.1", port: port, payload: Array("ping".utf8))
                    let atA = try a.udpCounters { $0["received"] == 1 }
                    #expect(atA?["received"] == 1 && atA?["own-port"] == 1 && atA?["echoed"] == 0, "A: \(String(describing: atA))")
                    let atB = try b.udpCounters(timeout: .seconds(5)) { _ in true }
                    #expect(atB?["received"] == 0 && atB?["echoed"] == 0, "B: \(String(describing: atB))")
                }
            }
        }

        /// `[UDP] RatePerSource=` holds for a flooding source while another source is served in
        /// full: 127.0.0.1 sends 600 datagrams as fast as it can, 127.0.0.2 sends 30 at 50/s.
        /// With `Processes=3` the datagrams of one source spread over three worker processes: the
        /// bucket is still one per source for the service (a per-process table would let three
        /// times the rate through).
        @Test(arguments: [1, 3]) func perSourceRateHoldsWhileAnotherSourceIsServed(processes: Int) throws {
            let (rate, burst) = (100.0, 50.0)
            let server = processes > 1 ? "[Server]\nProcesses=\(processes)\n" : ""
            try withEchod(
                config: Self.config(udp: ["127.0.0.1:0"], extra: server + "[UDP]\nRatePerSource=100\nBurstPerSource=50\n"),
                activation: .listen
            ) { server in
                let port = try #require(server.datagramEndpoints.first?.port, "\(server.describeState())")
                let flooder = try UDPClient(.v4)
                let polite = try UDPClient(.v4, address: "127.0.0.2")
                let start = ContinuousClock.now
                var (flooded, politeEchoes) = (0, 0)
                for round in 0..<30 {
                    for _ in 0..<20 { try flooder.send(Pattern.bytes(seed: 7, count: 100), to: port) }
                    try polite.send(Pattern.bytes(seed: UInt64(round), count: 100), to: port)
                    if try polite.receive(timeout: .seconds(2)) == Pattern.bytes(seed: UInt64(round), count: 100) {
                        politeEchoes += 1
                    }
                    flooded += flooder.drain().datagrams
                    pause(.milliseconds(20))
                }
                pause(.milliseconds(200))
                flooded += flooder.drain().datagrams
                let elapsed = (ContinuousClock.now - start).seconds
                #expect(politeEchoes == 30, "the polite source got \(politeEchoes) of 30 echoes back")
                let bound = burst + rate * elapsed + 1
                #expect(flooded > 0 && Double(flooded) <= bound, "\(flooded) of 600 flooded datagrams echoed in \(elapsed) s; at most \(bound)")
                let counters = try server.udpCounters { ($0["per-source"] ?? 0) > 0 }
                // Each flooded datagram was echoed or dropped for its source (or, on a starved
                // box, lost in echod's receive buffer before either).
                let dropped = counters?["per-source"] ?? 0
                #expect(dropped > 0 && dropped + UInt64(flooded) <= 600, "\(String(describing: counters))")
            }
        }

        /// `[UDP] MaxBytesPerSecond=` bounds what echod sends: offered 1 MB/s for a second, a
        /// 64 KiB/s cap sends at most its one-second burst plus the rate for the time elapsed.
        @Test func outputCapHolds() throws {
            let cap = 64 << 10
            try withEchod(config: Self.config(udp: ["127.0.0.1:0"], extra: "[UDP]\nMaxBytesPerSecond=64K\nRatePerSource=infinity\n"), activation: .listen) { server in
                let port = try #require(server.datagramEndpoints.first?.port, "\(server.describeState())")
                let client = try UDPClient(.v4)
                let payload = Pattern.bytes(seed: 5, count: 1000)
                let start = ContinuousClock.now
                var received = 0
                for _ in 0..<10 {
                    for _ in 0..<100 { try client.send(payload, to: port) }
                    pause(.milliseconds(100))
                    received += client.drain().bytes
                }
                pause(.milliseconds(300))
                received += client.drain().bytes
                let elapsed = (ContinuousClock.now - start).seconds
                let bound = Double(cap) * (1 + elapsed) + 1000
                #expect(received > 0 && Double(received) <= bound, "\(received) bytes echoed in \(elapsed) s; at most \(bound)")
                let counters = try server.udpCounters { ($0["cap"] ?? 0) > 0 }
                #expect((counters?["cap"] ?? 0) > 0, "\(String(describing: counters))")
            }
        }
    }
}
