// SPDX-License-Identifier: Apache-2.0
// Issue 11 item 7: targets named by host name (resolved with getaddrinfo: `localhost`, names from
// /etc/hosts), and a clear one-line error for a name that does not resolve.
import EchoCore
@testable import EchoLoad
import Foundation
import Glibc
import Testing

/// A name /etc/hosts maps to a loopback IPv4 address (other than `localhost`), if there is one.
func etcHostsLoopbackName() -> (name: String, address: String)? {
    guard let text = try? String(contentsOfFile: "/etc/hosts", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") {
        let words = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first?
            .split(whereSeparator: { $0 == " " || $0 == "\t" }) ?? []
        guard words.count >= 2, words[0].hasPrefix("127.") else { continue }
        for name in words.dropFirst() where name != "localhost" && !name.contains(".") {
            // Only a name whose first IPv4 address is this line's (no other line claims it first).
            if let resolved = try? LoadParsing.target("\(name):7"), resolved.host == String(words[0]) {
                return (String(name), String(words[0]))
            }
        }
    }
    return nil
}

@Suite struct HostnameTargets {
    @Test func namesResolveThroughGetaddrinfo() throws {
        #expect(try LoadParsing.target("localhost:9").description == "127.0.0.1:9")
        if let (name, address) = etcHostsLoopbackName() {
            #expect(try LoadParsing.target("\(name):7007").description == "\(address):7007")
        }
        // RFC 6761: .invalid never resolves.
        #expect(throws: LoadError.usage("TARGET: cannot resolve 'nosuchhost.invalid': Name or service not known")) {
            try LoadParsing.target("nosuchhost.invalid:7")
        }
        #expect(throws: LoadError.self) { try LoadParsing.target("localhost:http") }
        #expect(throws: LoadError.self) { try LoadParsing.target("localhost:0") }
    }

    @Test("a run against an /etc/hosts name is clean, and an unresolvable name is one line, status 64")
    func runAgainstAName() throws {
        let echod = try Echod()
        let port = echod.address.split(separator: ":").last!
        let name = etcHostsLoopbackName()?.name ?? "localhost"
        let run = try echoload(shortRun(.pingpong, "\(name):\(port)", connections: 2))
        try expectConsistent(run, mode: .pingpong, connections: 2, size: 100)
        let bad = try echoload(["hold", "nosuchhost.invalid:\(port)", "-c", "1"])
        #expect(bad.status == 64 && bad.stderr.hasPrefix("echoload: TARGET: cannot resolve 'nosuchhost.invalid'"), "\(bad)")
    }
}
