// SPDX-License-Identifier: Apache-2.0
// What a reload (SIGHUP) changes: the newly read configuration compared with the running one,
// key by key, as the key table says (`ConfigurationKey.onReload`). Keys that can change only at
// a restart keep their running values, so that the next reload compares against what is really
// in force.

/// The outcome of comparing a newly read configuration with the running one.
struct ReloadPlan {
    /// The configuration to run with from now on: the new one, with what needs a restart kept.
    var applied: Configuration
    /// Keys (`Model=`, `[Thread] StackSize=`) that changed but wait for a restart, in table order.
    var restartKeys: [String] = []
    /// Whether `[Limits]` changed, so the resource limits must be applied again.
    var limitsChanged = false

    /// The keys of `[Limits]`, applied to the process's resource limits.
    private static let limitKeys = ConfigurationKey.all.filter { $0.section == "Limits" }

    /// - Parameters:
    ///   - old: the running configuration.
    ///   - new: the configuration just read.
    ///   - socketsPassed: whether the listeners came from the service manager (then `Listen=`
    ///     and `Backlog=` are not used at all, and their changes are not worth a warning).
    init(running old: Configuration, loaded new: Configuration, socketsPassed: Bool) {
        applied = new
        for key in ConfigurationKey.all where key.differs(old, new) {
            switch key.onReload {
            case .live:
                if key.section == "Limits" { limitsChanged = true }
            case .restart:
                restartKeys.append(key.displayName)
                key.copy(old, &applied)
            case .restartUnlessSocketsPassed:
                if !socketsPassed { restartKeys.append(key.displayName) }
                key.copy(old, &applied)
            }
        }
    }

    /// Puts back the running `[Limits]`, after applying the new ones failed.
    mutating func keepLimits(of old: Configuration) {
        for key in Self.limitKeys { key.copy(old, &applied) }
    }
}
