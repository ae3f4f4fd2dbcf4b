// SPDX-License-Identifier: Apache-2.0
// The memory a supervisor shares with its worker processes (`Processes=` above 1): one
// anonymous MAP_SHARED mapping made before the first fork, so that every worker, replacements
// included, sees the same pages. Workers write only their own slot; the supervisor reads the
// slots and writes the header (the configuration of a reload). Every field is a UInt64 read and
// written with the C shim's atomics: Swift's `Atomic` cannot be placed in raw shared memory.
//
// Layout (UInt64 words):
//   header   [0] reload generation   [1] length of the configuration text   [2..7] unused
//   text     `textCapacity` bytes: the validated configuration of the latest reload, as
//            `Configuration.rendered()` prints it (without Listen=, which workers never use)
//   slots    8 words per worker: pid, ready, applied generation, heartbeat, open, accepted,
//            bytes echoed, accept back-offs
import CEchoShims
import Glibc

/// The shared mapping between the supervisor and its workers.
final class ProcessTable: @unchecked Sendable {
    /// One worker's words in the table.
    enum Field: Int, CaseIterable {
        /// The worker's pid (written by the supervisor before the fork, then by the worker).
        case pid
        /// 1 once the worker's model serves every listener (its READY=1).
        case ready
        /// The reload generation whose configuration the worker runs.
        case generation
        /// Advances while every loop of the worker turns (its WATCHDOG=1).
        case heartbeat
        /// The worker's figures (its `ServerSnapshot`), refreshed several times a second.
        case open, accepted, bytesEchoed, acceptBackoffs
    }

    /// Bytes of the reload configuration text that fit.
    static let textCapacity = 60 * 1024
    private static let headerWords = 8
    private static let slotWords = Field.allCases.count
    private static let textOffset = headerWords * 8

    let slots: Int
    private let base: UnsafeMutableRawPointer
    private let size: Int

    /// Maps the table for `slots` workers, zeroed.
    /// - Throws: `SystemError` from `mmap(2)`.
    init(slots: Int) throws(SystemError) {
        self.slots = slots
        size = Self.textOffset + Self.textCapacity + slots * Self.slotWords * 8
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw SystemError("mmap(process table)", errno: errno) }
        base = p
    }

    deinit { munmap(base, size) }

    private func word(_ index: Int) -> UnsafeMutablePointer<UInt64> {
        base.assumingMemoryBound(to: UInt64.self) + index
    }

    private func word(_ slot: Int, _ field: Field) -> UnsafeMutablePointer<UInt64> {
        precondition(slot >= 0 && slot < slots, "process table slot out of range")
        return word(Self.textOffset / 8 + Self.textCapacity / 8 + slot * Self.slotWords + field.rawValue)
    }

    /// One field of a slot.
    func load(_ slot: Int, _ field: Field) -> UInt64 {
        CEchoShims_atomic_load_u64_acquire(word(slot, field))
    }

    func store(_ slot: Int, _ field: Field, _ value: UInt64) {
        CEchoShims_atomic_store_u64_release(word(slot, field), value)
    }

    func increment(_ slot: Int, _ field: Field) {
        CEchoShims_atomic_add_u64(word(slot, field), 1)
    }

    /// Clears a slot for a new worker, keeping its heartbeat (a counter that never goes back, so
    /// the supervisor's watchdog compares it across a replacement) and marking it as running
    /// `generation`.
    func reset(_ slot: Int, generation: UInt64) {
        for field in Field.allCases where field != .heartbeat { store(slot, field, 0) }
        store(slot, .generation, generation)
    }

    /// The worker's figures as the model reported them last.
    func snapshot(_ slot: Int) -> ServerSnapshot {
        var s = ServerSnapshot()
        s.open = Int(load(slot, .open))
        s.accepted = load(slot, .accepted)
        s.bytesEchoed = load(slot, .bytesEchoed)
        s.acceptBackoffs = load(slot, .acceptBackoffs)
        return s
    }

    /// Worker side: publishes the model's figures in the slot.
    func publish(_ slot: Int, _ s: ServerSnapshot) {
        store(slot, .open, UInt64(max(0, s.open)))
        store(slot, .accepted, s.accepted)
        store(slot, .bytesEchoed, s.bytesEchoed)
        store(slot, .acceptBackoffs, s.acceptBackoffs)
    }

    /// The generation of the configuration text in the header.
    var generation: UInt64 { CEchoShims_atomic_load_u64_acquire(word(0)) }

    /// Supervisor side: writes a reload's configuration text, then (release) its generation.
    /// The supervisor writes again only once every worker has taken the previous one.
    /// - Returns: false when the text does not fit (nothing is changed).
    func publishConfiguration(_ text: String, generation: UInt64) -> Bool {
        var text = text
        let fits: Bool = text.withUTF8 { bytes in
            guard bytes.count <= Self.textCapacity else { return false }
            if let source = bytes.baseAddress {
                (base + Self.textOffset).copyMemory(from: source, byteCount: bytes.count)
            }
            CEchoShims_atomic_store_u64_release(word(1), UInt64(bytes.count))
            return true
        }
        guard fits else { return false }
        CEchoShims_atomic_store_u64_release(word(0), generation)
        return true
    }

    /// Worker side: the configuration text of the latest reload and its generation.
    func configuration() -> (generation: UInt64, text: String) {
        let generation = self.generation
        let length = Int(min(UInt64(Self.textCapacity), CEchoShims_atomic_load_u64_acquire(word(1))))
        let bytes = UnsafeRawBufferPointer(start: base + Self.textOffset, count: length)
        return (generation, String(decoding: bytes, as: UTF8.self))
    }
}

/// A worker process's link to its supervisor: its slot in the shared table, and the watchdog
/// period it reports at.
final class WorkerChannel: @unchecked Sendable {
    let table: ProcessTable
    let slot: Int
    /// How often the worker checks its own loops and advances its heartbeat: half the
    /// supervisor's check period, so every supervisor check sees at least one step.
    let watchdogInterval: Duration?

    init(table: ProcessTable, slot: Int, supervisorWatchdog: Duration?) {
        self.table = table
        self.slot = slot
        watchdogInterval = supervisorWatchdog.map { $0 / 2 }
    }
}

/// The worker's side of sd_notify: only the supervisor talks to systemd. `READY=1` marks the
/// slot ready, `WATCHDOG=1` advances its heartbeat; the rest (STATUS=, RELOADING=1, STOPPING=1)
/// has nowhere to go, as the supervisor sends its own.
struct WorkerNotifier: ServiceNotifier {
    let channel: WorkerChannel

    func notify(_ assignments: String) {
        for line in assignments.split(separator: "\n") {
            switch line {
            case "READY=1": channel.table.store(channel.slot, .ready, 1)
            case "WATCHDOG=1": channel.table.increment(channel.slot, .heartbeat)
            default: break
            }
        }
    }

    var watchdogInterval: Duration? { channel.watchdogInterval }
}
