// `MaxConnections=` resolved into the number a model enforces.
import Glibc

enum EffectiveConnectionLimit {
    /// Descriptors kept back from `MaxConnections=auto` for listeners, logs, the signalfd and
    /// the like, besides the two (epoll, eventfd) of each event-model worker.
    static let descriptorReserve = 64

    /// `MaxConnections=` resolved (`auto`: the open-file soft limit less a reserve), combined with
    /// the model's own limit (`MaxThreads=`, `MaxChildren=`).
    static func resolve(_ config: Configuration, workers: Int) -> Int {
        var limit: Int
        switch config.maxConnections {
        case .limit(let n):
            limit = n
        case .auto:
            let soft = (try? ResourceLimits.get(ResourceLimits.noFile).soft) ?? 1024
            let usable = min(soft, UInt64(Int32.max))
            let reserve = descriptorReserve + (config.model == .event ? 2 * workers : 0)
            limit = max(1, Int(usable) - reserve)
        }
        switch config.model {
        case .event: break
        case .thread: limit = min(limit, config.maxThreads)
        case .fork: limit = min(limit, config.maxChildren)
        }
        return limit
    }
}
