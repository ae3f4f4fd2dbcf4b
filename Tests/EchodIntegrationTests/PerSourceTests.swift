// SPDX-License-Identifier: Apache-2.0
// MaxConnectionsPerSource= and MaxConnectionRatePerSource= (issue 13, items 6 to 10) in every
// model: an abusive source (127.0.0.2) is held off while a well-behaved one (127.0.0.1) is
// served; refusals are connections accepted and closed at once, never echoed, counted in
// STATUS= and logged with their counts, not once each; a reload changes the limits for new
// connections at once, closes no open connection, and open connections count against it.
//
// Nothing here depends on timing but the rate test's bucket, which refills once every 10 s:
// the test's connections take a fraction of that even on a loaded machine.
import Glibc
import Testing

extension EchodIntegration {
    @Suite struct PerSource {
        static let abuser = "127.0.0.2"
        static let neighbour = "127.0.0.1"

        static func config(model: String, _ keys: String) -> String {
            Echod.config(model: model, extra: "[Server]\n" + keys)
        }

        /// Connects from `source` and tries one echo: true if it came back byte-exact, false if
        /// echod closed the connection instead (EOF or a reset: a refusal).
        static func served(_ server: EchodServer, from source: String, keep: inout [Client]) throws -> Bool {
            let client = try Client(port: server.port, source: source)
            let bytes = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 3) }
            do {
                try client.writeAll(bytes)
                let echoed = try client.readExactly(bytes.count)
                #expect(echoed == bytes)
                keep.append(client)
                return true
            } catch {
                return false
            }
        }

        static func served(_ server: EchodServer, from source: String) throws -> Bool {
            var keep: [Client] = []
            return try served(server, from: source, keep: &keep)
        }

        /// Retries until a connection from `source` is served (a released place is given back
        /// when echod has seen the close: at once in the event model, when the thread ends or
        /// the child is reaped in the others).
        static func eventuallyServed(_ server: EchodServer, from source: String, keep: inout [Client]) throws -> Bool {
            let deadline = Deadline(.seconds(10))
            while !deadline.hasExpired {
                if try served(server, from: source, keep: &keep) { return true }
                usleep(50_000)
            }
            return false
        }

        @Test(arguments: servingModels)
        func aSourceAtItsConnectionLimitIsRefusedWhileAnotherIsServed(model: String) throws {
            try withEchod(config: Self.config(model: model, "MaxConnectionsPerSource=2\n")) { server in
                var open: [Client] = []
                #expect(try Self.served(server, from: Self.abuser, keep: &open))
                #expect(try Self.served(server, from: Self.abuser, keep: &open))
                // The third from the same source: accepted and closed, nothing echoed.
                #expect(try !Self.served(server, from: Self.abuser), "third connection from one source served (\(model))")
                #expect(try !Self.served(server, from: Self.abuser))
                // Another source is not held back, and the first two are still served.
                var neighbours: [Client] = []
                for _ in 0..<2 { #expect(try Self.served(server, from: Self.neighbour, keep: &neighbours)) }
                for client in open { try EchodIntegration.Timeouts.ping(client, 7) }
                let status = try EchodIntegration.Timeouts.statusAfterReload(server)
                #expect(status?.contains("refused: 2 per-source, 0 rate, 0 table-full") == true, "STATUS=\(status ?? "none")")
                let logged = waitUntil(timeout: .seconds(6), interval: .milliseconds(100)) {
                    server.child.stderrText.contains("refused.per_source.total=2")
                }
                #expect(logged, "no refusal log line; stderr:\n\(server.child.stderrTail())")
                #expect(server.child.stderrText.contains("source.last=127.0.0.2"))
                #expect(server.child.stderrText.ranges(of: "refused connections past per-source limits").count < 2)
                // A closed connection gives its place back.
                open.removeFirst().close()
                #expect(try Self.eventuallyServed(server, from: Self.abuser, keep: &open), "place not given back (\(model))")
            }
        }

        @Test(arguments: servingModels)
        func aSourceReconnectingInATightLoopIsRefusedPastItsBucket(model: String) throws {
            // One connection per 10 s, 3 at once.
            let keys = "MaxConnectionRatePerSource=6/min\nMaxConnectionBurstPerSource=3\n"
            try withEchod(config: Self.config(model: model, keys)) { server in
                var outcomes: [Bool] = []
                for _ in 0..<8 { outcomes.append(try Self.served(server, from: Self.abuser)) }
                #expect(outcomes == [true, true, true, false, false, false, false, false], "\(model)")
                // The neighbour has its own bucket.
                for _ in 0..<3 { #expect(try Self.served(server, from: Self.neighbour), "neighbour slowed (\(model))") }
                let status = try EchodIntegration.Timeouts.statusAfterReload(server)
                #expect(status?.contains("refused: 0 per-source, 5 rate, 0 table-full") == true, "STATUS=\(status ?? "none")")
                let logged = waitUntil(timeout: .seconds(6), interval: .milliseconds(100)) {
                    server.child.stderrText.contains("refused.rate.total=5")
                }
                #expect(logged, "no refusal log line; stderr:\n\(server.child.stderrTail())")
                #expect(server.child.stderrText.ranges(of: "refused connections past per-source limits").count < 5)
            }
        }

        /// A reload that sets a limit lower than what a source has open closes none of its
        /// connections (fork children keep theirs: they hold nothing but their connection);
        /// they count against the new limit, so the source gets a new one only once it is
        /// under it.
        @Test(arguments: servingModels)
        func reloadAppliesTheConnectionLimitToNewConnectionsAndCountsOpenOnes(model: String) throws {
            try withEchod(config: Self.config(model: model, "")) { server in
                var open: [Client] = []
                for _ in 0..<3 { #expect(try Self.served(server, from: Self.abuser, keep: &open)) }
                _ = try server.dir.write("echod.conf", Self.config(model: model, "MaxConnectionsPerSource=2\n"))
                let status = try EchodIntegration.Timeouts.statusAfterReload(server)
                #expect(status != nil, "no READY=1 after the reload (\(server.describeState()))")
                #expect(try !Self.served(server, from: Self.abuser), "served past the reloaded limit (\(model))")
                #expect(try Self.served(server, from: Self.neighbour))
                for (n, client) in open.enumerated() { try EchodIntegration.Timeouts.ping(client, n) }
                // 3 open, limit 2: one closed leaves 2, still at the limit.
                open.removeFirst().close()
                #expect(try !Self.served(server, from: Self.abuser), "served at the limit (\(model))")
                open.removeFirst().close()
                #expect(try Self.eventuallyServed(server, from: Self.abuser, keep: &open), "\(model)")
                // And a reload back to no limit lets the source open more at once.
                _ = try server.dir.write("echod.conf", Self.config(model: model, ""))
                #expect(try EchodIntegration.Timeouts.statusAfterReload(server) != nil)
                for _ in 0..<3 { #expect(try Self.served(server, from: Self.abuser, keep: &open)) }
            }
        }

        @Test(arguments: servingModels)
        func reloadAppliesTheRateLimitToNewConnections(model: String) throws {
            try withEchod(config: Self.config(model: model, "")) { server in
                for _ in 0..<4 { #expect(try Self.served(server, from: Self.abuser)) }
                _ = try server.dir.write(
                    "echod.conf",
                    Self.config(model: model, "MaxConnectionRatePerSource=6/min\nMaxConnectionBurstPerSource=1\n"))
                #expect(try EchodIntegration.Timeouts.statusAfterReload(server) != nil)
                #expect(try Self.served(server, from: Self.abuser))
                #expect(try !Self.served(server, from: Self.abuser), "rate not applied by the reload (\(model))")
                #expect(try Self.served(server, from: Self.neighbour))
                _ = try server.dir.write("echod.conf", Self.config(model: model, ""))
                #expect(try EchodIntegration.Timeouts.statusAfterReload(server) != nil)
                #expect(try Self.served(server, from: Self.abuser), "rate still applied after it was removed (\(model))")
            }
        }
    }
}
