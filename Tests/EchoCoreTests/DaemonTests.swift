// SPDX-License-Identifier: Apache-2.0

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

    /// The trigger's signal is blocked only when the key is on at start, so a reload must not
    /// turn it on (or off): it waits for a restart like `Model=`.
    @Test func watchdogTestTriggerWaitsForARestart() {
        let old = Configuration()
        var new = old
        new.watchdogTestTrigger = true
        let plan = ReloadPlan(running: old, loaded: new, socketsPassed: false)
        #expect(plan.restartKeys == ["[Debug] WatchdogTestTrigger="])
        #expect(plan.applied.watchdogTestTrigger == false)
        let back = ReloadPlan(running: new, loaded: old, socketsPassed: true)
        #expect(back.restartKeys == ["[Debug] WatchdogTestTrigger="])
        #expect(back.applied.watchdogTestTrigger == true)
    }

    @Test func anUnchangedConfigurationChangesNothing() {
        let plan = ReloadPlan(running: Configuration(), loaded: Configuration(), socketsPassed: false)
        #expect(plan.restartKeys.isEmpty)
        #expect(!plan.limitsChanged)
    }
}

/// The thread and fork models' stop cadence, on a fake clock.
@Suite struct StopEscalationTests {
    @Test func asksEveryPeriodThenForcesOnceAtTheDeadline() {
        var e = StopEscalation()
        #expect(e.step(now: 10_000_000_000) == .wait)  // not stopping
        #expect(e.nextRound(now: 0) == nil)
        e.begin(deadline: 1_000_000_000, now: 0)
        #expect(e.isStopping)
        #expect(e.step(now: 50_000_000) == .wait)
        #expect(e.nextRound(now: 50_000_000) == 50_000_000)
        #expect(e.step(now: 100_000_000) == .ask)
        #expect(e.step(now: 150_000_000) == .wait)
        #expect(e.step(now: 999_999_999) == .ask)
        #expect(!e.forced)
        #expect(e.step(now: 1_100_000_000) == .force(first: true))
        #expect(e.forced)
        #expect(e.step(now: 1_200_000_000) == .force(first: false))
    }
}

/// Each model's share of `MaxConnections=`.
@Suite struct ConnectionLimitTests {
    @Test func autoLeavesTheReservesAndTheModelCapApplies() {
        var c = Configuration()
        c.maxConnections = .auto
        c.workers = 2
        c.model = .event
        #expect(EventModel.connectionLimit(c, openFileLimit: 1000, daemonReserve: 64) == 1000 - 64 - 4)
        c.maxThreads = 100
        #expect(ThreadModel.connectionLimit(c, openFileLimit: 1000, daemonReserve: 64) == 100)
        c.maxChildren = 2000
        #expect(ForkModel.connectionLimit(c, openFileLimit: 1000, daemonReserve: 64) == 1000 - 64)
        c.maxConnections = .limit(50)
        #expect(ForkModel.connectionLimit(c, openFileLimit: 1000, daemonReserve: 64) == 50)
        #expect(EventModel.connectionLimit(c, openFileLimit: 10, daemonReserve: 64) == 50)
        c.maxConnections = .auto
        #expect(EventModel.connectionLimit(c, openFileLimit: 10, daemonReserve: 64) == 1)
    }
}
