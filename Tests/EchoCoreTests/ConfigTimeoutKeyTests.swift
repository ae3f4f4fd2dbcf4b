// SPDX-License-Identifier: Apache-2.0
// IdleTimeoutSec= and SendTimeoutSec= (issue 13, items 4 and 5): syntax, defaults, rendering,
// and the settings the daemon hands to the models.
import EchoCore
import Testing

private typealias Fixture = ConfigFixture

@Suite struct ConfigTimeoutKeyTests {
    @Test func defaultsAreIdleOffAndSendFiveMinutes() {
        let config = Configuration()
        #expect(config.idleTimeout == nil)
        #expect(config.sendTimeout == .seconds(300))
        let rendered = config.rendered()
        #expect(rendered.contains("# default\nIdleTimeoutSec=infinity\n"))
        #expect(rendered.contains("# default\nSendTimeoutSec=5min\n"))
    }

    @Test(arguments: [
        ("30", Duration.seconds(30)), ("500ms", .milliseconds(500)), ("1ms", .milliseconds(1)),
        ("5min", .seconds(300)), ("24h", .seconds(86_400)), ("1min 30s", .seconds(90)),
    ])
    func timeSpansAreAccepted(_ text: String, _ expected: Duration) throws {
        for key in ["IdleTimeoutSec", "SendTimeoutSec"] {
            let config = try Fixture.parse("[Server]\n\(key)=\(text)\n")
            #expect((key == "IdleTimeoutSec" ? config.idleTimeout : config.sendTimeout) == expected)
        }
    }

    @Test(arguments: ["infinity", "0", "0s"])
    func infinityAndZeroTurnATimeoutOff(_ text: String) throws {
        let config = try Fixture.parse("[Server]\nIdleTimeoutSec=\(text)\nSendTimeoutSec=\(text)\n")
        #expect(config.idleTimeout == nil)
        #expect(config.sendTimeout == nil)
        #expect(config.rendered().contains("\nSendTimeoutSec=infinity\n"))
    }

    @Test(arguments: ["25h", "500us", "-1", "forever", "1.5.2", "Infinity"])
    func otherValuesAreRejectedWithTheExpectedSyntax(_ text: String) {
        #expect(
            Fixture.rejection(of: "[Server]\nSendTimeoutSec=\(text)\n") == [
                "test.conf:2: invalid value '\(text)' for SendTimeoutSec=: expected a time span from 1ms to 24h, "
                    + "or 'infinity' (or 0) for none, e.g. '30s', '5min'"
            ])
    }

    @Test func renderedValuesParseBack() throws {
        let config = try Fixture.parse("[Server]\nIdleTimeoutSec=90s\nSendTimeoutSec=1500ms\n")
        #expect(config.rendered().contains("\nIdleTimeoutSec=90s\n"))
        #expect(config.rendered().contains("\nSendTimeoutSec=1500ms\n"))
        let again = try Fixture.parse(config.rendered())
        #expect(Fixture.settingsOnly(again) == Fixture.settingsOnly(config))
    }
}
