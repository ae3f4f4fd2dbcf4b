// What a reload (SIGHUP) changes: the newly read configuration compared with the running one.
// Keys that can change only at a restart keep their running values, so that the next reload
// compares against what is really in force.

/// The outcome of comparing a newly read configuration with the running one.
struct ReloadPlan {
    /// The configuration to run with from now on: the new one, with what needs a restart kept.
    var applied: Configuration
    /// `Key=` names (`[Section] Key=` outside `[Server]`) that changed but wait for a restart.
    var restartKeys: [String] = []
    /// Whether `[Limits]` changed, so the resource limits must be applied again.
    var limitsChanged: Bool

    /// - Parameters:
    ///   - old: the running configuration.
    ///   - new: the configuration just read.
    ///   - socketsPassed: whether the listeners came from the service manager (then `Listen=`
    ///     and `Backlog=` are not used at all, and their changes are not worth a warning).
    init(running old: Configuration, loaded new: Configuration, socketsPassed: Bool) {
        applied = new
        if new.model != old.model { restartKeys.append("Model=") }
        if new.workers != old.workers { restartKeys.append("Workers=") }
        if new.threadStackSize != old.threadStackSize { restartKeys.append("[Thread] StackSize=") }
        if !socketsPassed && new.listen != old.listen { restartKeys.append("Listen=") }
        if !socketsPassed && new.backlog != old.backlog { restartKeys.append("Backlog=") }
        applied.model = old.model
        applied.workers = old.workers
        applied.listen = old.listen
        applied.backlog = old.backlog
        applied.threadStackSize = old.threadStackSize
        limitsChanged = ConfiguredLimits.differ(new, old)
    }

    /// Puts back the running `[Limits]`, after applying the new ones failed.
    mutating func keepLimits(of old: Configuration) {
        applied.noFile = old.noFile
        applied.nProc = old.nProc
        applied.core = old.core
        applied.stackSize = old.stackSize
    }
}
