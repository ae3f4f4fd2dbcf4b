// SPDX-License-Identifier: Apache-2.0
// The payload every connection sends, and how its echo is checked.
//
// A connection's stream is cut into blocks of `blockSize` bytes (by stream offset); block `b` of
// the connection with key `k` is the slice `table[s ..< s + blockSize]` of a fixed pseudo-random
// table, starting at `s = mix(k, b) mod tablePeriod`, where `mix` is a 64-bit hash of the
// connection's key and the 64-bit block number, and the key is a bijective hash of the
// connection's 64-bit global index. So the content depends on the connection and on the
// position, with no period at all: a flipped byte, a lost or repeated chunk (the stream shifts),
// bytes from another connection, or old bytes of the same connection replayed from any distance
// back all compare unequal, except for the one case of a whole replayed block whose keyed start
// happens to equal the expected one (1 in `tablePeriod`, 262,139, per block; a replay of many
// blocks cannot pass). `blockSize` is below `tablePeriod`, so two offsets one table period apart
// never share a block. (The previous pattern was `table[(seed + i) mod 65521]`: a server that
// replayed data from exactly 65,521 bytes back, or mixed up connections 65,521 apart, passed.)
//
// Sends go straight from the table (one `sendmsg` with one iovec per block touched), and checks
// are one `memcmp` per block touched: one 64-bit hash per 16 KiB, nothing allocated, no copy,
// and the check needs no record of what was sent, only the count of bytes verified so far.
import EchoCore
import Glibc

/// The patterned payload shared by every connection of the process.
public enum Pattern {
    /// Length of the table's pseudo-random sequence (a prime).
    public static let tablePeriod = 262_139
    /// Bytes per block (each block is one contiguous slice of the table). Below `tablePeriod`.
    public static let blockSize = 16_384
    /// The most bytes one send may cover.
    public static let maxChunk = 1 << 20
    /// iovecs one send may need: `maxChunk` bytes from an unaligned start.
    static let maxSegments = maxChunk / blockSize + 1

    /// `tablePeriod + blockSize` bytes; read-only after initialisation.
    nonisolated(unsafe) static let table: UnsafeMutablePointer<UInt8> = {
        let count = tablePeriod + blockSize
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: count)
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        for i in 0..<tablePeriod {
            // xorshift64*: fixed, so every process (parent and children) has the same table.
            x ^= x >> 12
            x ^= x << 25
            x ^= x >> 27
            p[i] = UInt8(truncatingIfNeeded: (x &* 0x2545_F491_4F6C_DD1D) >> 56)
        }
        for i in tablePeriod..<count { p[i] = p[i - tablePeriod] }
        return p
    }()

    /// splitmix64's finaliser: a bijection of 64-bit values that mixes every bit into every bit.
    @inline(__always)
    static func mix(_ v: UInt64) -> UInt64 {
        var z = v
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The key of the connection with global index `index` (0-based across all processes):
    /// distinct for every index (a bijection of the 64-bit index).
    @inline(__always)
    public static func key(forConnection index: Int) -> UInt64 {
        mix(UInt64(bitPattern: Int64(index)) &+ 0x6A09_E667_F3BC_C909)
    }

    /// Where block `block` of the connection with `key` starts in the table.
    @inline(__always)
    static func blockStart(key: UInt64, block: UInt64) -> Int {
        Int(mix(key ^ (block &* 0x9E37_79B9_7F4A_7C15)) % UInt64(tablePeriod))
    }

    /// The bytes at stream position `position` of the connection with `key`.
    /// - Returns: their address and how many are contiguous from there (to the block's end).
    @inline(__always)
    public static func segment(key: UInt64, position: UInt64) -> (UnsafePointer<UInt8>, Int) {
        let offset = Int(position % UInt64(blockSize))
        let start = blockStart(key: key, block: position / UInt64(blockSize))
        return (UnsafePointer(table + start + offset), blockSize - offset)
    }

    /// The byte at stream position `position` of the connection with `key`.
    public static func byte(key: UInt64, position: UInt64) -> UInt8 {
        segment(key: key, position: position).0.pointee
    }

    /// Sends stream bytes `[position, position + count)` (count at most `maxChunk`) of the
    /// connection with `key` on `fd`, with MSG_NOSIGNAL: one send(2), or one sendmsg(2) with an
    /// iovec per block when they span several (the iovecs live on the stack).
    /// - Returns: the call's outcome, as `SocketIO` reports it.
    @inline(__always)
    public static func send(_ fd: Int32, key: UInt64, position: UInt64, count: Int) -> Transfer {
        let (first, contiguous) = segment(key: key, position: position)
        if count <= contiguous { return SocketIO.send(fd, from: first, count: count) }
        return withUnsafeTemporaryAllocation(of: iovec.self, capacity: maxSegments) { iov -> Transfer in
            var n = 0
            var done = 0
            while done < count && n < maxSegments {
                let (p, length) = segment(key: key, position: position &+ UInt64(done))
                let take = min(length, count - done)
                iov[n] = iovec(iov_base: UnsafeMutableRawPointer(mutating: p), iov_len: take)
                n += 1
                done += take
            }
            return SocketIO.send(fd, vectors: iov.baseAddress!, count: n)
        }
    }

    /// Checks `count` received bytes against the stream of the connection with `key` at `position`.
    ///
    /// - Returns: nil when they match, else the offset within `received` of the first byte that
    ///   differs.
    @inline(__always)
    public static func firstMismatch(
        _ received: UnsafeRawPointer, count: Int, key: UInt64, position: UInt64
    ) -> Int? {
        var done = 0
        while done < count {
            let (expected, contiguous) = segment(key: key, position: position &+ UInt64(done))
            let n = min(count - done, contiguous)
            if memcmp(received + done, expected, n) != 0 {
                let r = (received + done).assumingMemoryBound(to: UInt8.self)
                for i in 0..<n where r[i] != expected[i] { return done + i }
            }
            done += n
        }
        return nil
    }
}
