// SPDX-License-Identifier: Apache-2.0
// Per-source state of the whole service: how many connections each source has open, and its
// connection-rate bucket (MaxConnectionsPerSource=, MaxConnectionRatePerSource=; issue 13
// items 6 to 10). The UDP echo keeps its own instance for its per-source datagram bucket.
//
// Scope: per service, not per process or thread. The table lives in one MAP_SHARED|
// MAP_ANONYMOUS mapping that the daemon makes before it builds the model, so every thread, fork
// child and worker process forked after it sees the same counts. One process-shared, robust
// pthread mutex guards it; it is held for a hash probe of at most `probeLimit` entries and never
// across a system call. Nothing on the echo path touches it: a connection takes the lock once
// when it is accepted and once when it ends.
//
// Bounds: a fixed number of 32-byte entries (a power of two, from the connection limit at start,
// see `capacity(forMaxConnections:)`), open addressing with linear probing over a window of
// `probeLimit` entries from the key's hash (seeded at random per start, so a client cannot aim
// its addresses at one window). Nothing is allocated after start and a flood of new sources
// (spoofed or an IPv6 sweep) cannot grow it. An entry whose source has no connection open and a
// full bucket holds nothing worth keeping: it is reused in place for a new source (entries are
// never emptied, so probe chains stay intact). When a source's window holds no such entry (every
// entry in it has open connections, or a bucket still refilling), the table is full for that
// source: with a per-source limit in force the connection is refused and counted as
// `tableFull`: admitting it untracked would lift the limits exactly when someone is filling the
// table; with no limit set it is admitted untracked (nothing is ever refused for a limit that is
// off). Entries with open connections are at most the open connections, and the table has at
// least twice as many entries as `MaxConnections=` at start, so it fills only when many sources
// race to refill their buckets (a bucket is full again at most burst/rate seconds after its
// last connection) or a reload raised `MaxConnections=` far above the size chosen at start.
import CEchoShims
import Glibc
import Logging

/// The per-source table: connections open and a rate bucket per source, shared by every process
/// of the service.
public final class SourceTable: @unchecked Sendable {
    // @unchecked: every mutable field lives in the shared mapping and is read and written under
    // its process-shared mutex, or with atomic loads and adds (the refusal counters).

    /// The limits in force, as a reload sets them.
    public struct Limits: Sendable, Equatable {
        /// `MaxConnectionsPerSource=`: connections one source may have open; nil for no limit.
        public var maxConnections: Int?
        /// `MaxConnectionRatePerSource=` and `MaxConnectionBurstPerSource=`; nil for no limit.
        public var rate: TokenBucket?
        /// `SourcePrefixIPv6=`: the bits of an IPv6 address that name its source.
        public var prefixIPv6: Int

        public init(maxConnections: Int? = nil, rate: TokenBucket? = nil, prefixIPv6: Int = SourceKey.defaultPrefixIPv6) {
            self.maxConnections = maxConnections
            self.rate = rate
            self.prefixIPv6 = prefixIPv6
        }

        /// Whether any per-source limit is set.
        public var isLimiting: Bool { maxConnections != nil || rate != nil }
    }

    /// Why a connection was refused.
    public enum Refusal: Sendable, Equatable {
        /// Its source has `MaxConnectionsPerSource=` connections open already.
        case perSource
        /// Its source's bucket is empty (`MaxConnectionRatePerSource=`).
        case rate
        /// The table has no entry for its source and no room for one (see the file's header).
        case tableFull
    }

    /// What `admit` decided.
    public enum Admission: Sendable, Equatable {
        /// Admitted; give the ticket back with `release` when the connection ends.
        case admitted(SourceTicket)
        /// Refused: accept it and close it at once, without echoing.
        case refused(Refusal)
    }

    /// Refusals since start, by reason, across every process of the service.
    public struct Refusals: Sendable, Equatable {
        public var perSource: UInt64 = 0
        public var rate: UInt64 = 0
        public var tableFull: UInt64 = 0
        public init() {}

        /// `, refused: N per-source, M rate, K table-full` for `STATUS=`.
        public var statusSuffix: String { ", refused: \(perSource) per-source, \(rate) rate, \(tableFull) table-full" }
    }

    /// Entries probed from a key's hash before the table counts as full for it: eight cache
    /// lines, under a microsecond, while a run of 32 used entries in a table at most half full
    /// of live ones is rare enough not to matter.
    public static let probeLimit = 32

    /// Most entries any table gets (64 MiB of address space; pages are touched only as sources
    /// arrive).
    public static let maxCapacity = 1 << 21

    /// Entries in the table (a power of two).
    public let capacity: Int
    private let mask: Int
    private let window: Int
    private let seed: UInt64
    private let mapping: UnsafeMutableRawPointer
    private let mappingSize: Int
    private let header: UnsafeMutablePointer<Header>
    private let entries: UnsafeMutablePointer<Entry>

    /// Refusals per source, per rate, table full, then connections admitted untracked: four
    /// UInt64 after the header, added to and read atomically (read without the mutex).
    private let counters: UnsafeMutablePointer<UInt64>

    /// The mapping's first 256 bytes: the mutex, `Header`, and at 192 the counters.
    private static let mutexBytes = 64
    private static let countersOffset = 192
    private static let headerBytes = 256

    /// What follows the mutex at the start of the mapping (read and written under the mutex).
    private struct Header {
        var maxConnections: Int64  // 0: no limit
        var interval: Int64  // 0: no rate limit
        var tolerance: Int64
        var prefixIPv6: Int64
        var lastRefusedHigh: UInt64
        var lastRefusedLow: UInt64
        var lastRefusedBits: UInt64
        var usedEntries: UInt64
    }

    /// One source: 32 bytes.
    struct Entry {
        var high: UInt64
        var low: UInt64
        /// The rate bucket's theoretical arrival time (see `TokenBucket`); 0 when never limited.
        var tat: Int64
        /// Connections open from this source.
        var connections: UInt32
        var bits: UInt8
        /// 0 until the entry first holds a source; never 0 again (it ends probe chains).
        var used: UInt8
    }

    /// The size for a connection limit: the next power of two of twice `maxConnections`, at
    /// least 1024 and at most `maxCapacity`.
    public static func capacity(forMaxConnections maxConnections: Int) -> Int {
        let wanted = min(max(1024, 2 * max(maxConnections, 0)), maxCapacity)
        var capacity = 1
        while capacity < wanted { capacity <<= 1 }
        return capacity
    }

    /// Maps a table of `capacity` entries (rounded up to a power of two), shared with every
    /// process forked after this call, with no limits set.
    ///
    /// - Parameters:
    ///   - capacity: entries, 1 to `maxCapacity`.
    ///   - seed: the hash seed (tests fix it; by default a random one per start).
    /// - Throws: `SystemError` if the mapping or its mutex cannot be made.
    public init(capacity: Int, seed: UInt64 = .random(in: .min ... .max)) throws(SystemError) {
        precondition(capacity >= 1 && capacity <= Self.maxCapacity)
        precondition(MemoryLayout<Entry>.stride == 32 && MemoryLayout<Header>.size <= Self.countersOffset - Self.mutexBytes)
        precondition(Int(CEchoShims_shared_mutex_size()) <= Self.mutexBytes)
        var size = 1
        while size < capacity { size <<= 1 }
        self.capacity = size
        mask = size - 1
        window = min(Self.probeLimit, size)
        self.seed = seed
        mappingSize = Self.headerBytes + size * MemoryLayout<Entry>.stride
        let memory = mmap(nil, mappingSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        guard let memory, memory != MAP_FAILED else { throw SystemError("mmap(source table)", errno: errno) }
        mapping = memory
        // A fresh anonymous mapping is zero: every entry unused, every setting off.
        let err = CEchoShims_shared_mutex_init(memory)
        if err != 0 {
            munmap(memory, mappingSize)
            throw SystemError("pthread_mutex_init(source table)", errno: err)
        }
        header = (memory + Self.mutexBytes).bindMemory(to: Header.self, capacity: 1)
        header.pointee.prefixIPv6 = Int64(SourceKey.defaultPrefixIPv6)
        counters = (memory + Self.countersOffset).bindMemory(to: UInt64.self, capacity: 4)
        entries = (memory + Self.headerBytes).bindMemory(to: Entry.self, capacity: size)
    }

    deinit {
        munmap(mapping, mappingSize)
    }

    @inline(__always)
    private func withLock<R>(_ body: () -> R) -> R {
        CEchoShims_shared_mutex_lock(mapping)
        defer { CEchoShims_shared_mutex_unlock(mapping) }
        return body()
    }

    // MARK: - Limits

    /// Sets the limits for connections admitted from now on, in every process of the service.
    /// Connections already open keep their place: a lower limit closes none of them, and they
    /// count against it.
    public func apply(_ limits: Limits) {
        withLock {
            header.pointee.maxConnections = Int64(limits.maxConnections ?? 0)
            header.pointee.interval = limits.rate?.interval ?? 0
            header.pointee.tolerance = limits.rate?.tolerance ?? 0
            header.pointee.prefixIPv6 = Int64(limits.prefixIPv6)
        }
    }

    /// The `SourcePrefixIPv6=` in force.
    public var prefixIPv6: Int { withLock { Int(header.pointee.prefixIPv6) } }

    /// The key of a peer address under the `SourcePrefixIPv6=` in force; nil for a family that
    /// is not IP.
    public func key(of peer: UnsafeRawPointer) -> SourceKey? {
        SourceKey(peer, prefixIPv6: prefixIPv6)
    }

    // MARK: - Connections

    /// Decides on a connection from `peer` (as `accept(2)` filled it in) under the limits in
    /// force, and counts it against its source if admitted.
    ///
    /// - Parameters:
    ///   - peer: the peer's socket address.
    ///   - now: CLOCK_MONOTONIC nanoseconds.
    /// - Returns: `.admitted` with the ticket to `release`, or `.refused` (already counted).
    public func admit(peer: UnsafeRawPointer, now: Int64) -> Admission {
        withLock {
            guard let key = SourceKey(peer, prefixIPv6: Int(header.pointee.prefixIPv6)) else {
                return .admitted(.untracked)
            }
            return admitLocked(key, now: now)
        }
    }

    /// `admit(peer:now:)` for a key already made (tests, and callers that keyed the peer themselves).
    public func admit(_ key: SourceKey, now: Int64) -> Admission {
        withLock { admitLocked(key, now: now) }
    }

    private func admitLocked(_ key: SourceKey, now: Int64) -> Admission {
        let h = header
        let maxConnections = h.pointee.maxConnections
        let interval = h.pointee.interval
        let limiting = maxConnections > 0 || interval > 0
        guard let index = findOrInsert(key, now: now) else {
            if !limiting {
                CEchoShims_atomic_add_u64(counters + 3, 1)
                return .admitted(.untracked)
            }
            return refuseLocked(.tableFull, key)
        }
        let e = entries + index
        var tat = e.pointee.tat
        if interval > 0 {
            let bucket = TokenBucket(interval: interval, tolerance: h.pointee.tolerance)
            if !bucket.take(&tat, now: now) { return refuseLocked(.rate, key) }
        }
        if maxConnections > 0 && Int64(e.pointee.connections) >= maxConnections {
            return refuseLocked(.perSource, key)
        }
        e.pointee.tat = tat
        e.pointee.connections &+= 1
        return .admitted(SourceTicket(index: Int32(index)))
    }

    private func refuseLocked(_ reason: Refusal, _ key: SourceKey) -> Admission {
        let h = header
        switch reason {
        case .perSource: CEchoShims_atomic_add_u64(counters, 1)
        case .rate: CEchoShims_atomic_add_u64(counters + 1, 1)
        case .tableFull: CEchoShims_atomic_add_u64(counters + 2, 1)
        }
        h.pointee.lastRefusedHigh = key.high
        h.pointee.lastRefusedLow = key.low
        h.pointee.lastRefusedBits = UInt64(key.bits)
        return .refused(reason)
    }

    /// Gives back what `admit` counted: the connection has ended. An untracked ticket is a no-op.
    public func release(_ ticket: SourceTicket) {
        guard ticket.isTracked else { return }
        withLock {
            let e = entries + Int(ticket.index)
            if e.pointee.connections > 0 { e.pointee.connections -= 1 }
        }
    }

    // MARK: - Rate only (the UDP echo's per-source bucket)

    /// Takes a token from `key`'s bucket in this table (a table used for rates only, such as the
    /// UDP echo's): `bucket` is the caller's, not the connection limits.
    ///
    /// - Returns: whether a token was taken; false also when the table has no room for the
    ///   source (counted as `tableFull`).
    public func takeToken(_ key: SourceKey, bucket: TokenBucket, now: Int64) -> Bool {
        withLock {
            guard let index = findOrInsert(key, now: now) else {
                _ = refuseLocked(.tableFull, key)
                return false
            }
            return bucket.take(&entries[index].tat, now: now)
        }
    }

    // MARK: - Figures

    /// Refusals since start, every process of the service included.
    public var refusals: Refusals {
        var r = Refusals()
        r.perSource = CEchoShims_atomic_load_u64(counters)
        r.rate = CEchoShims_atomic_load_u64(counters + 1)
        r.tableFull = CEchoShims_atomic_load_u64(counters + 2)
        return r
    }

    /// The source refused last, if any.
    public var lastRefused: SourceKey? {
        withLock {
            let h = header.pointee
            guard h.lastRefusedBits != 0 || h.lastRefusedLow != 0 || h.lastRefusedHigh != 0 else { return nil }
            return SourceKey(high: h.lastRefusedHigh, low: h.lastRefusedLow, bits: Int(h.lastRefusedBits))
        }
    }

    /// Connections admitted because the table had no room for their source while no limit was
    /// set (they are not counted per source).
    public var untracked: UInt64 { CEchoShims_atomic_load_u64(counters + 3) }

    /// Connections `key` has open (tests, diagnostics).
    public func connections(of key: SourceKey) -> Int {
        withLock { find(key).map { Int(entries[$0].connections) } ?? 0 }
    }

    /// Entries that have ever held a source (reused entries count once).
    public var usedEntries: Int { withLock { Int(header.pointee.usedEntries) } }

    // MARK: - Probing

    @inline(__always)
    private static func mix(_ x: UInt64) -> UInt64 {
        // splitmix64's finalizer.
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inline(__always)
    private func home(_ key: SourceKey) -> Int {
        Int(truncatingIfNeeded: Self.mix(key.low ^ Self.mix(key.high ^ seed ^ UInt64(key.bits)))) & mask
    }

    @inline(__always)
    private static func matches(_ e: UnsafeMutablePointer<Entry>, _ key: SourceKey) -> Bool {
        e.pointee.high == key.high && e.pointee.low == key.low && e.pointee.bits == key.bits
    }

    private func find(_ key: SourceKey) -> Int? {
        let start = home(key)
        for i in 0..<window {
            let index = (start + i) & mask
            let e = entries + index
            if e.pointee.used == 0 { return nil }
            if Self.matches(e, key) { return index }
        }
        return nil
    }

    /// The entry of `key`, made if need be in the first reusable entry of its window (never
    /// used, or no connections and a full bucket); nil when there is none.
    private func findOrInsert(_ key: SourceKey, now: Int64) -> Int? {
        let start = home(key)
        var reusable = -1
        for i in 0..<window {
            let index = (start + i) & mask
            let e = entries + index
            if e.pointee.used == 0 {
                // The end of the chain: the key is not further on.
                if reusable < 0 { reusable = index }
                break
            }
            if Self.matches(e, key) { return index }
            if reusable < 0 && e.pointee.connections == 0 && TokenBucket.isFull(e.pointee.tat, now: now) {
                reusable = index
            }
        }
        guard reusable >= 0 else { return nil }
        let e = entries + reusable
        if e.pointee.used == 0 { header.pointee.usedEntries += 1 }
        e.pointee = Entry(high: key.high, low: key.low, tat: 0, connections: 0, bits: key.bits, used: 1)
        return reusable
    }
}

/// What `SourceTable.admit` hands out for an admitted connection, to give back with `release`
/// when it ends: the index of its source's entry (an entry with open connections is never
/// reused, so the index stays its source's), or `untracked`.
public struct SourceTicket: Sendable, Equatable {
    /// The entry's index, or -1.
    public let index: Int32

    public init(index: Int32) { self.index = index }

    /// A connection not counted in the table (not IP, or admitted while the table had no room
    /// and no limit was set): releasing it does nothing.
    public static let untracked = SourceTicket(index: -1)

    public var isTracked: Bool { index >= 0 }
}

extension TokenBucket {
    /// A bucket from the values kept in the shared header.
    init(interval: Int64, tolerance: Int64) {
        self.interval = interval
        self.tolerance = tolerance
    }
}

extension SourceTable {
    /// What was last logged, so that the daemon logs refusals of every model and process with
    /// their counts at each STATUS= refresh that has new ones: at most one line every 2 s,
    /// never one per connection.
    public struct LogState {
        private var last = Refusals()

        public init() {}

        /// Logs the refusals since the last call, with the totals and the source refused last,
        /// if there are any.
        public mutating func logIfChanged(_ table: SourceTable, _ logger: Logger) {
            let now = table.refusals
            guard now != last else { return }
            logger.notice(
                "refused connections past per-source limits",
                metadata: [
                    "refused.per_source": "\(now.perSource &- last.perSource)",
                    "refused.rate": "\(now.rate &- last.rate)",
                    "refused.table_full": "\(now.tableFull &- last.tableFull)",
                    "refused.per_source.total": "\(now.perSource)", "refused.rate.total": "\(now.rate)",
                    "refused.table_full.total": "\(now.tableFull)",
                    "source.last": "\(table.lastRefused.map { "\($0)" } ?? "")",
                ])
            last = now
        }
    }
}
