// SPDX-License-Identifier: Apache-2.0
// Patterned random payloads that can be generated and checked at any offset without
// keeping the sent bytes: a connection's stream is a window into one fixed random block,
// starting at an offset derived from the connection's seed. The block's period is odd, so
// a duplicated, dropped or reordered 64 KiB chunk never lines up with the pattern again,
// and two connections with different seeds start in different places, so crossed streams
// are caught too.
import Glibc

enum Pattern {
    /// Length of the repeating random sequence: odd and close to 4 MiB.
    static let period = 4_194_301
    /// The longest window `withBytes` hands out; larger transfers are split.
    static let maxChunk = 256 * 1024

    /// `period` random bytes followed by the first `maxChunk` of them again, so that every
    /// window of up to `maxChunk` bytes is contiguous.
    static let block: [UInt8] = {
        var state: UInt64 = 0x0ec0_d5ee_d000_0001
        var bytes = [UInt8](repeating: 0, count: period + maxChunk)
        bytes.withUnsafeMutableBytes { raw in
            let words = period / 8 + 1
            for index in 0..<words {
                var word = splitMix(&state).littleEndian
                let start = index * 8
                let count = min(8, period - start)
                withUnsafeBytes(of: &word) { raw.baseAddress!.advanced(by: start).copyMemory(from: $0.baseAddress!, byteCount: count) }
            }
            raw.baseAddress!.advanced(by: period).copyMemory(from: raw.baseAddress!, byteCount: maxChunk)
        }
        return bytes
    }()

    static func splitMix(_ state: inout UInt64) -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Where the stream of `seed` starts in the block.
    static func start(seed: UInt64) -> Int {
        var state = seed
        return Int(splitMix(&state) % UInt64(period))
    }

    /// Calls `body` with bytes `offset ..< offset + count` of the stream of `seed`; count <= maxChunk.
    static func withBytes<R>(seed: UInt64, offset: Int, count: Int, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        precondition(count <= maxChunk)
        let position = (start(seed: seed) + offset % period) % period
        return block.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[position..<position + count])) }
    }

    /// Bytes `offset ..< offset + count` of the stream of `seed`, as an array.
    static func bytes(seed: UInt64, offset: Int = 0, count: Int) -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(count)
        var done = 0
        while done < count {
            let length = min(maxChunk, count - done)
            withBytes(seed: seed, offset: offset + done, count: length) { result += $0 }
            done += length
        }
        return result
    }

    /// Offset (within `received`) of the first byte that differs from the stream of `seed`
    /// at `offset`, or nil if all of `received` matches.
    static func firstMismatch(_ received: UnsafeRawBufferPointer, seed: UInt64, offset: Int) -> Int? {
        var done = 0
        while done < received.count {
            let length = min(maxChunk, received.count - done)
            let chunk = UnsafeRawBufferPointer(rebasing: received[done..<done + length])
            let mismatch: Int? = withBytes(seed: seed, offset: offset + done, count: length) { expected in
                if memcmp(chunk.baseAddress!, expected.baseAddress!, length) == 0 { return nil }
                return (0..<length).first { chunk[$0] != expected[$0] }
            }
            if let mismatch { return done + mismatch }
            done += length
        }
        return nil
    }
}

/// nil when `received` equals `expected`; otherwise what differs: the first differing
/// offset with the bytes around it, or the length difference.
func describeMismatch(received: [UInt8], expected: [UInt8]) -> String? {
    let common = min(received.count, expected.count)
    let offset = received.withUnsafeBytes { r in
        expected.withUnsafeBytes { e in
            common == 0 || memcmp(r.baseAddress!, e.baseAddress!, common) == 0
                ? nil : (0..<common).first { r[$0] != e[$0] }
        }
    }
    if let offset {
        return "first differing byte at offset \(offset) of \(expected.count): "
            + "got \(hexWindow(received, around: offset)), expected \(hexWindow(expected, around: offset))"
    }
    if received.count != expected.count {
        return "got \(received.count) bytes, expected \(expected.count) (the first \(common) match)"
    }
    return nil
}

func hexWindow(_ bytes: [UInt8], around offset: Int) -> String {
    let range = max(0, offset - 4)..<min(bytes.count, offset + 8)
    return "[" + range.map { index in
        let hex = String(bytes[index], radix: 16)
        return (index == offset ? "*" : "") + (hex.count == 1 ? "0" + hex : hex)
    }.joined(separator: " ") + "] (from offset \(range.lowerBound))"
}
