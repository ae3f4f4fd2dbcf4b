// The payload every connection sends, and how its echo is checked.
//
// Byte `i` of connection `c`'s stream is `table[(seed(c) + i) % period]`, where `table` is a
// fixed pseudo-random sequence and `period` is a prime. So the content depends on the connection
// and on the position in its stream: a flipped byte, a lost or repeated chunk (the stream shifts),
// or bytes from another connection (another seed) all compare unequal, and the check needs no
// copy of what was sent — only the count of bytes verified so far.
//
// The table is stored `period + maxChunk` bytes long, so that any run of up to `maxChunk` bytes
// starting anywhere in the period is contiguous: sends go straight from the table, and checks are
// one `memcmp` per received chunk. Nothing is allocated per message.
import Glibc

/// The patterned payload shared by every connection of the process.
public enum Pattern {
    /// Length of the repeating sequence (a prime, so seeds spaced by a unit spread evenly).
    public static let period = 65_521
    /// The most bytes one send or one comparison may cover.
    public static let maxChunk = 1 << 20

    /// `period + maxChunk` bytes; read-only after initialisation.
    nonisolated(unsafe) static let table: UnsafeMutablePointer<UInt8> = {
        let count = period + maxChunk
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: count)
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        for i in 0..<period {
            // xorshift64*: fixed, so every process (parent and children) has the same table.
            x ^= x >> 12
            x ^= x << 25
            x ^= x >> 27
            p[i] = UInt8(truncatingIfNeeded: (x &* 0x2545_F491_4F6C_DD1D) >> 56)
        }
        for i in period..<count { p[i] = p[i % period] }
        return p
    }()

    /// The seed of the connection with global index `index` (0-based across all processes).
    /// Distinct for the first `period` connections: 40_503 and the prime `period` are coprime.
    @inline(__always)
    public static func seed(forConnection index: Int) -> Int {
        (index % period) * 40_503 % period
    }

    /// Address of the bytes at stream position `position` of a connection with `seed`; at least
    /// `maxChunk` bytes are readable from there.
    @inline(__always)
    public static func bytes(seed: Int, position: UInt64) -> UnsafePointer<UInt8> {
        UnsafePointer(table + Int((UInt64(seed) &+ position) % UInt64(period)))
    }

    /// Checks `count` received bytes against the stream at `position`.
    ///
    /// - Returns: nil when they match, else the offset within `received` of the first byte that
    ///   differs.
    @inline(__always)
    public static func firstMismatch(
        _ received: UnsafeRawPointer, count: Int, seed: Int, position: UInt64
    ) -> Int? {
        var done = 0
        while done < count {
            let n = min(count - done, maxChunk)
            let expected = bytes(seed: seed, position: position &+ UInt64(done))
            if memcmp(received + done, expected, n) != 0 {
                let r = (received + done).assumingMemoryBound(to: UInt8.self)
                for i in 0..<n where r[i] != expected[i] { return done + i }
            }
            done += n
        }
        return nil
    }
}
