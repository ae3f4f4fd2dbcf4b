// SPDX-License-Identifier: Apache-2.0
// Small text helpers without Foundation: fixed-point numbers, errno names, whole writes.
import Glibc

/// `d` with `digits` decimals, without Foundation.
func formatFixed(_ d: Double, _ digits: Int) -> String {
    guard d.isFinite else { return "-" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let v = (abs(d) * scale).rounded()
    let whole = UInt64(v / scale)
    let frac = UInt64(v - Double(whole) * scale)
    var s = (d < 0 && v > 0 ? "-" : "") + String(whole)
    if digits > 0 {
        let fs = String(frac)
        s += "." + String(repeating: "0", count: max(0, digits - fs.count)) + fs
    }
    return s
}

/// Symbolic name of an errno, for counting failures by kind.
public func errnoName(_ e: Int32) -> String {
    switch e {
    case ECONNREFUSED: return "ECONNREFUSED"
    case ECONNRESET: return "ECONNRESET"
    case ECONNABORTED: return "ECONNABORTED"
    case ETIMEDOUT: return "ETIMEDOUT"
    case EPIPE: return "EPIPE"
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL"
    case EADDRINUSE: return "EADDRINUSE"
    case EMFILE: return "EMFILE"
    case ENFILE: return "ENFILE"
    case ENOBUFS: return "ENOBUFS"
    case ENOMEM: return "ENOMEM"
    case EHOSTUNREACH: return "EHOSTUNREACH"
    case ENETUNREACH: return "ENETUNREACH"
    case EACCES: return "EACCES"
    case EPERM: return "EPERM"
    case EAGAIN: return "EAGAIN"
    case EINVAL: return "EINVAL"
    case EAFNOSUPPORT: return "EAFNOSUPPORT"
    default: return "E\(e)"
    }
}

/// Writes all of `text` to `fd` with write(2), retrying on EINTR and short writes.
@discardableResult
public func writeAll(_ fd: Int32, _ text: String) -> Bool {
    var bytes = Array(text.utf8)
    var done = 0
    return bytes.withUnsafeMutableBytes { raw -> Bool in
        while done < raw.count {
            let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
            if n > 0 { done += n; continue }
            if n < 0 && errno == EINTR { continue }
            return false
        }
        return true
    }
}
