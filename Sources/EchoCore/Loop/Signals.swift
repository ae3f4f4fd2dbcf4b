// SPDX-License-Identifier: Apache-2.0
// The process's signal mask and dispositions: what echod blocks before any thread starts (so
// signals reach only the signalfd), and what it ignores.
import Glibc

/// Process-wide signal mask and disposition helpers.
public enum Signals {
    /// Blocks `signals` in the calling thread; threads created afterwards inherit the mask.
    /// Call before any thread starts, so the signals reach only a signalfd.
    /// The corresponding C function is `pthread_sigmask(3)`.
    public static func block(_ signals: [Int32]) {
        var mask = set(signals)
        pthread_sigmask(SIG_BLOCK, &mask, nil)
    }

    /// Unblocks `signals` in the calling thread.
    public static func unblock(_ signals: [Int32]) {
        var mask = set(signals)
        pthread_sigmask(SIG_UNBLOCK, &mask, nil)
    }

    /// A signal set holding exactly `signals`. The corresponding C functions are `sigemptyset(3)`
    /// and `sigaddset(3)`.
    static func set(_ signals: [Int32]) -> sigset_t {
        var mask = sigset_t()
        sigemptyset(&mask)
        for s in signals { sigaddset(&mask, s) }
        return mask
    }

    /// Ignores SIGPIPE: a peer that resets its connection must give EPIPE, not kill echod.
    public static func ignoreSIGPIPE() {
        signal(SIGPIPE, SIG_IGN)
    }
}

/// `SIGTERM`-style names for the signals echod handles.
func signalName(_ signal: Int32) -> String {
    switch signal {
    case SIGHUP: return "SIGHUP"
    case SIGTERM: return "SIGTERM"
    case SIGINT: return "SIGINT"
    case SIGCHLD: return "SIGCHLD"
    case SIGUSR1: return "SIGUSR1"
    default: return "signal \(signal)"
    }
}
