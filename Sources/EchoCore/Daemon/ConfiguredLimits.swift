// SPDX-License-Identifier: Apache-2.0
// `[Limits]` of the configuration (NoFile=, NProc=, Core=, StackSize=) applied to the process's
// soft resource limits, at start and again on reload when they changed.
import Glibc
import Logging

/// Applies the `[Limits]` section to the process's resource limits.
enum ConfiguredLimits {
    /// Sets the soft limits `config` asks for and logs, once, what is in force.
    ///
    /// - Throws: `StartupError` naming the key (and its `file:line`) when a value is above the
    ///   hard limit (exit status 78), or when the limits cannot be read or set.
    static func apply(_ config: Configuration, logger: Logger) throws(StartupError) {
        // (key, log label, resource, value, the unit file's setting for the hard limit)
        let wanted: [(String, String, Int32, ResourceLimitValue?, String)] = [
            ("NoFile", "limit.nofile", ResourceLimits.noFile, config.noFile, "LimitNOFILE="),
            ("NProc", "limit.nproc", ResourceLimits.nProc, config.nProc, "LimitNPROC="),
            ("Core", "limit.core", ResourceLimits.core, config.core, "LimitCORE="),
            ("StackSize", "limit.stack", ResourceLimits.stack, config.stackSize, "LimitSTACK="),
        ]
        var metadata: Logger.Metadata = [:]
        for (key, label, resource, value, unitSetting) in wanted {
            let applied = try applyLimit(
                key: key, resource: resource, value: value, unitSetting: unitSetting,
                origin: config.origins["Limits.\(key)"])
            metadata[label] = "\(ResourceLimit.format(applied.soft))"
            metadata[label + ".hard"] = "\(ResourceLimit.format(applied.hard))"
        }
        logger.info("resource limits applied", metadata: metadata)
    }

    /// Sets one soft limit (`max`: up to the hard limit; nil: leave it).
    /// - Returns: the limit now in force.
    private static func applyLimit(
        key: String, resource: Int32, value: ResourceLimitValue?, unitSetting: String, origin: SourceLocation?
    ) throws(StartupError) -> ResourceLimit {
        let current: ResourceLimit
        do {
            current = try ResourceLimits.get(resource)
        } catch {
            throw StartupError("cannot read the \(key)= limit: \(error)", errno: error.errno)
        }
        var wanted = current
        switch value {
        case nil: return current
        case .max: wanted.soft = current.hard
        case .value(let v):
            guard v <= current.hard else {
                let at = origin.map { "\($0): " } ?? ""
                throw StartupError(
                    "\(at)\(key)=\(v) is above the hard limit (\(ResourceLimit.format(current.hard))); "
                        + "raise \(unitSetting) in the unit or use \(key)=max",
                    errno: EPERM, exitStatus: ExitStatus.config)
            }
            wanted.soft = v
        }
        guard wanted != current else { return current }
        do {
            try ResourceLimits.set(resource, wanted)
        } catch {
            throw StartupError("cannot set the \(key)= limit to \(wanted): \(error)", errno: error.errno)
        }
        return wanted
    }
}
