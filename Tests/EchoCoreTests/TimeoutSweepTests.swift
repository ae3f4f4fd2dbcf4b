// SPDX-License-Identifier: Apache-2.0
// The event model's timeout sweep (ConnectionTimeouts.swift) on its own, sweep by sweep: no
// clock, no sockets, so the counting rule is checked exactly.
@testable import EchoCore
import Testing

@Suite struct TimeoutSweepTests {
    /// Sweeps `table` `times` times; returns the slots each sweep collected.
    static func sweep(
        _ table: borrowing ConnectionTable, times: Int, idleSweeps: Int32, sendSweeps: Int32
    ) -> [(idle: [Int32], stalled: [Int32])] {
        (0..<times).map { _ in
            var idle: [Int32] = []
            var stalled: [Int32] = []
            table.sweepTimeouts(idleSweeps: idleSweeps, sendSweeps: sendSweeps, idle: &idle, stalled: &stalled)
            return (idle, stalled)
        }
    }

    @Test func aConnectionIsCollectedOnlyAfterMoreSweepsThanTheTimeoutCovers() {
        var table = ConnectionTable(initialCapacity: 4)
        let quiet = table.allocate(fd: 100)
        let stalled = table.allocate(fd: 101)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)
        defer { buffer.deallocate() }
        table.entry(stalled).pointee.pending = buffer
        // Timeouts of 3 sweeps (idle) and 5 sweeps (send): collected at sweep 4 and 6.
        let rounds = Self.sweep(table, times: 6, idleSweeps: 3, sendSweeps: 5)
        #expect(rounds.map(\.idle) == [[], [], [], [quiet], [quiet], [quiet]])
        #expect(rounds.map(\.stalled) == [[], [], [], [], [], [stalled]])
        table.entry(stalled).pointee.pending = nil
        table.free(quiet)
        table.free(stalled)
    }

    @Test func progressRestartsTheCountAndOffMeansNever() {
        var table = ConnectionTable(initialCapacity: 4)
        let slot = table.allocate(fd: 100)
        _ = Self.sweep(table, times: 3, idleSweeps: 3, sendSweeps: 0)
        table.entry(slot).pointee.link = 0  // what the echo path does on progress
        #expect(Self.sweep(table, times: 3, idleSweeps: 3, sendSweeps: 0).allSatisfy { $0.idle.isEmpty })
        #expect(Self.sweep(table, times: 1, idleSweeps: 3, sendSweeps: 0)[0].idle == [slot])
        // Off: never collected, however long.
        #expect(Self.sweep(table, times: 50, idleSweeps: 0, sendSweeps: 0).allSatisfy { $0.idle.isEmpty })
        table.free(slot)
    }

    @Test func drainingAndFreeSlotsAreLeftAlone() {
        var table = ConnectionTable(initialCapacity: 4)
        let draining = table.allocate(fd: 100)
        let freed = table.allocate(fd: 101)
        table.free(freed)
        table.entry(draining).pointee.phase = .draining
        table.entry(draining).pointee.link = 1234  // the drain clock, which the sweep must not touch
        #expect(Self.sweep(table, times: 5, idleSweeps: 1, sendSweeps: 1).allSatisfy { $0.idle.isEmpty && $0.stalled.isEmpty })
        #expect(table.entry(draining).pointee.link == 1234)
        table.free(draining)
    }

    /// A pure function: the shared settings are process-wide, and changing them here would
    /// reach the workers of other suites running at the same time.
    @Test func sweepIntervalIsAQuarterOfTheShorterTimeoutWithinBounds() {
        #expect(ConnectionTimeouts.sweepInterval(idleMilliseconds: 0, sendMilliseconds: 0) == nil)
        #expect(ConnectionTimeouts.sweepInterval(idleMilliseconds: 0, sendMilliseconds: 2000) == 500)
        #expect(ConnectionTimeouts.sweepInterval(idleMilliseconds: 100, sendMilliseconds: 2000) == 100)
        #expect(ConnectionTimeouts.sweepInterval(idleMilliseconds: 3_600_000, sendMilliseconds: 0) == 1000)
        #expect(ConnectionTimeouts.sweepInterval(idleMilliseconds: 1000, sendMilliseconds: 300_000) == 250)
    }
}
