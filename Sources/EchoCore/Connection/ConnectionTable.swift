// SPDX-License-Identifier: Apache-2.0
/// What a connection is doing.
@usableFromInline
enum ConnectionPhase: UInt8 {
    /// Reading and echoing.
    case echoing
    /// A stop is under way: keep echoing until the peer has been quiet for `drainQuietPeriodMilliseconds`,
    /// then close the write side.
    case draining
    /// Our write side is shut: read and discard until the peer closes, so that closing with
    /// unread input does not turn into a reset that could destroy echoed bytes still in flight.
    case lingering
}

/// One connection's state: 32 bytes, and no buffer unless a write is pending.
///
/// An idle connection owns nothing in user space but this entry. Bytes that could not be written
/// back yet live in `pending`, a buffer borrowed from the worker's pool while the write waits, and
/// the connection is not read again until they drain: the client meets backpressure through TCP.
@usableFromInline
struct Connection {
    var fd: Int32 = -1
    /// Bumped on every close, so an event queued for a closed connection cannot reach a new
    /// connection that got the same slot (or the same fd number) in the same batch.
    var generation: UInt32 = 0
    var pending: UnsafeMutableRawPointer? = nil
    var pendingStart: Int32 = 0
    var pendingEnd: Int32 = 0
    /// Two uses, never at once, to keep the entry at 32 bytes: while the slot is free, the next
    /// free slot (an intrusive free list: no side array to grow); while draining, milliseconds
    /// since the stop began at which a read last returned data.
    var link: Int32 = -1
    var phase: ConnectionPhase = .echoing
    /// The connection's `SourceTicket` (the index of its source's entry in the per-source table),
    /// in the three bytes the entry would otherwise spend on padding: 24 bits hold every index
    /// of a table of at most 2^21 entries, and 0xFFFFFF stands for `untracked`.
    var sourceLow: UInt8 = 0xFF
    var sourceHigh: UInt16 = 0xFFFF

    /// The connection's ticket in the per-source table.
    var source: SourceTicket {
        get {
            let raw = Int32(sourceHigh) << 8 | Int32(sourceLow)
            return raw == 0xFF_FFFF ? .untracked : SourceTicket(index: raw)
        }
        set {
            let raw = newValue.isTracked ? UInt32(newValue.index) : 0xFF_FFFF
            sourceLow = UInt8(truncatingIfNeeded: raw)
            sourceHigh = UInt16(truncatingIfNeeded: raw >> 8)
        }
    }
}

/// A worker's connections, indexed by slot, in one contiguous allocation that doubles as needed.
///
/// The table owns its connections' descriptors: `allocate` takes ownership of one, and `close`
/// is the only way it is closed (once, with the slot freed in the same step).
///
/// Not thread-safe: owned by one worker thread. Storage is manual (not an Array) so that the hot
/// path indexes a pointer without copy-on-write or exclusivity checks.
@usableFromInline
struct ConnectionTable: ~Copyable {
    private(set) var base: UnsafeMutablePointer<Connection>
    private(set) var capacity: Int
    private var freeHead: Int32 = -1
    /// Slots ever handed out (slots at or past this index have never been used).
    private(set) var highWater: Int = 0
    /// Slots in use.
    private(set) var count: Int = 0

    init(initialCapacity: Int = 1024) {
        capacity = initialCapacity
        base = .allocate(capacity: initialCapacity)
        base.initialize(repeating: Connection(), count: initialCapacity)
    }

    deinit {
        base.deinitialize(count: capacity)
        base.deallocate()
    }

    /// Generation values fit in 30 bits so that tokens keep their two top bits for tags.
    static let generationMask: UInt32 = 0x3FFF_FFFF

    /// Takes a free slot for `fd`.
    /// - Returns: the slot index.
    mutating func allocate(fd: Int32) -> Int32 {
        let slot: Int32
        if freeHead >= 0 {
            slot = freeHead
            freeHead = base[Int(slot)].link
        } else {
            if highWater == capacity { grow() }
            slot = Int32(highWater)
            highWater += 1
        }
        let entry = base.advanced(by: Int(slot))
        entry.pointee.fd = fd
        entry.pointee.link = -1
        entry.pointee.phase = .echoing
        entry.pointee.source = .untracked
        entry.pointee.pendingStart = 0
        entry.pointee.pendingEnd = 0
        count += 1
        return slot
    }

    /// Closes the connection's descriptor and frees its slot. Any pending buffer must have been
    /// handed back first.
    mutating func close(_ slot: Int32) {
        closeNoRetry(base[Int(slot)].fd)
        free(slot)
    }

    /// Returns `slot` to the free list and bumps its generation (without closing anything: for
    /// tests of the table itself; connections go through `close`).
    mutating func free(_ slot: Int32) {
        let entry = base.advanced(by: Int(slot))
        precondition(entry.pointee.fd >= 0 && entry.pointee.pending == nil, "freeing a slot that is not cleaned up")
        entry.pointee.fd = -1
        entry.pointee.generation = (entry.pointee.generation &+ 1) & Self.generationMask
        entry.pointee.link = freeHead
        freeHead = slot
        count -= 1
    }

    /// The entry for `slot` if it is in use with `generation`, else nil (a stale event).
    @inline(__always)
    func entry(_ slot: Int32, generation: UInt32) -> UnsafeMutablePointer<Connection>? {
        guard slot >= 0, Int(slot) < highWater else { return nil }
        let entry = base.advanced(by: Int(slot))
        guard entry.pointee.fd >= 0, entry.pointee.generation == generation else { return nil }
        return entry
    }

    /// The entry for a slot known to be in use.
    @inline(__always)
    func entry(_ slot: Int32) -> UnsafeMutablePointer<Connection> {
        base.advanced(by: Int(slot))
    }

    /// Slots in use, for the rare whole-table walks (stop, forced close).
    func usedSlots() -> [Int32] {
        var slots: [Int32] = []
        slots.reserveCapacity(count)
        for i in 0..<highWater where base[i].fd >= 0 { slots.append(Int32(i)) }
        return slots
    }

    private mutating func grow() {
        let newCapacity = capacity * 2
        let newBase = UnsafeMutablePointer<Connection>.allocate(capacity: newCapacity)
        newBase.moveInitialize(from: base, count: capacity)
        newBase.advanced(by: capacity).initialize(repeating: Connection(), count: newCapacity - capacity)
        base.deallocate()
        base = newBase
        capacity = newCapacity
    }
}
