// SPDX-License-Identifier: Apache-2.0
// Test-only: with `[Debug] WatchdogTestTrigger=yes`, SIGUSR1 makes an event-model worker hang,
// so that the integration tests can watch the watchdog withhold its ping. Everything the daemon
// does for it is here; the pool's side is `WorkerPool.hangFirstWorker`.
import Glibc
import Logging

enum WatchdogTestTrigger {
    /// The signal that hangs a worker.
    static let signal = SIGUSR1

    /// Blocks the signal (it goes to the signalfd) and warns. Call while still the only thread:
    /// the mask is inherited by every worker.
    /// - Returns: the signals to add to the daemon's signalfd.
    static func arm(_ configuration: Configuration, logger: Logger) -> [Int32] {
        guard configuration.watchdogTestTrigger else { return [] }
        Signals.block([signal])
        logger.warning("WatchdogTestTrigger=yes: SIGUSR1 will hang a worker (for tests only)")
        return [signal]
    }

    /// The signal arrived: hang a worker, if the model has any.
    static func fire(_ model: ServingModel, logger: Logger) {
        logger.warning("SIGUSR1: hanging a worker (WatchdogTestTrigger)")
        (model as? EventModel)?.hangWorkerForTest()
    }
}
