import Logging
import Testing

@testable import EchoCore

/// The reload diff, driven by the key table's `onReload`.
@Suite struct ReloadPlanTests {
    /// A configuration that differs from the defaults in every key a reload treats specially.
    private static func changed() throws -> Configuration {
        var new = Configuration()
        new.model = .fork
        new.workers = 3
        new.threadStackSize = 128 * 1024
        new.listen = [try SocketAddress(parsing: "127.0.0.1:9")]
        new.backlog = 7
        new.logLevel = .debug
        new.maxConnections = .limit(5)
        new.maxChildren = 11
        return new
    }

    @Test func restartKeysKeepTheirRunningValuesAndAreNamed() throws {
        let old = Configuration()
        let new = try Self.changed()
        let plan = ReloadPlan(running: old, loaded: new, socketsPassed: false)
        #expect(plan.restartKeys == ["Model=", "Listen=", "Workers=", "Backlog=", "[Thread] StackSize="])
        #expect(plan.applied.model == old.model)
        #expect(plan.applied.workers == old.workers)
        #expect(plan.applied.threadStackSize == old.threadStackSize)
        #expect(plan.applied.listen == old.listen)
        #expect(plan.applied.backlog == old.backlog)
        // Live keys take the new values.
        #expect(plan.applied.logLevel == .debug)
        #expect(plan.applied.maxConnections == .limit(5))
        #expect(plan.applied.maxChildren == 11)
        #expect(!plan.limitsChanged)
    }

    @Test func underSocketActivationListenAndBacklogAreKeptQuietly() throws {
        let old = Configuration()
        let plan = ReloadPlan(running: old, loaded: try Self.changed(), socketsPassed: true)
        #expect(plan.restartKeys == ["Model=", "Workers=", "[Thread] StackSize="])
        #expect(plan.applied.listen == old.listen)
        #expect(plan.applied.backlog == old.backlog)
    }

    @Test func limitsAreLiveAndCanBePutBack() {
        let old = Configuration()
        var new = old
        new.noFile = .value(1000)
        new.core = .value(0)
        var plan = ReloadPlan(running: old, loaded: new, socketsPassed: false)
        #expect(plan.limitsChanged)
        #expect(plan.restartKeys.isEmpty)
        #expect(plan.applied.noFile == .value(1000))
        plan.keepLimits(of: old)
        #expect(plan.applied.noFile == old.noFile)
        #expect(plan.applied.core == old.core)
    }

    @Test func anUnchangedConfigurationChangesNothing() {
        let plan = ReloadPlan(running: Configuration(), loaded: Configuration(), socketsPassed: false)
        #expect(plan.restartKeys.isEmpty)
        #expect(!plan.limitsChanged)
    }
}
