// SPDX-License-Identifier: Apache-2.0

import Logging

/// At most one warning a second from one source, so that a storm of failures (EMFILE on every
/// accept, children dying one after another) cannot flood the journal.
struct RateLimitedWarning {
    private var last: Int64 = 0

    /// Logs `message` unless this source already warned within the last second.
    mutating func warn(_ logger: Logger, _ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata) {
        let now = monotonicNanoseconds()
        guard now - last >= 1_000_000_000 else { return }
        last = now
        logger.warning(message(), metadata: metadata())
    }
}
