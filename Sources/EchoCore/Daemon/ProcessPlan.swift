// SPDX-License-Identifier: Apache-2.0
// What `Processes=` comes to on this host, for `echod --check-config`: the processes, and the
// limits that apply per process (`MaxConnections=`, `Workers=`, `MaxThreads=`, the rlimits)
// with their totals.
import CEchoShims

/// The per-process and total figures of a configuration on this host.
public struct ProcessPlan: Equatable, Sendable {
    /// Worker processes (1: echod is one process).
    public var processes: Int
    /// Event-model worker threads per process (nil for the other models).
    public var workersPerProcess: Int?
    /// `MaxConnections=` resolved for one process.
    public var connectionsPerProcess: Int
    /// `MaxThreads=` of one process (thread model only).
    public var threadsPerProcess: Int?

    /// - Parameters:
    ///   - configuration: the configuration.
    ///   - availableCPUs: CPUs echod may run on.
    ///   - openFileLimit: the soft `RLIMIT_NOFILE` each process will run with.
    public init(_ configuration: Configuration, availableCPUs: Int, openFileLimit: UInt64) {
        processes = configuration.processCount(availableCPUs: availableCPUs)
        workersPerProcess =
            configuration.model == .event ? EventModel.workerCount(configuration, availableCPUs: availableCPUs) : nil
        threadsPerProcess = configuration.model == .thread ? configuration.maxThreads : nil
        // The reserve of the event model depends on its workers: count them for these CPUs.
        var resolved = configuration
        if let workersPerProcess { resolved.workers = workersPerProcess }
        connectionsPerProcess = configuration.model.servingModel.connectionLimit(
            resolved, openFileLimit: openFileLimit, daemonReserve: Daemon.descriptorReserve)
    }

    /// The plan for this host: its CPUs, and the open-file limit `NoFile=` will set (the hard
    /// limit for `max`, the inherited soft limit when unset).
    public static func forThisHost(_ configuration: Configuration) -> ProcessPlan {
        let current = (try? ResourceLimits.get(ResourceLimits.noFile)) ?? ResourceLimit(soft: 1024, hard: 1024)
        let limit: UInt64
        switch configuration.noFile {
        case .max: limit = current.hard
        case .value(let v): limit = v
        }
        return ProcessPlan(configuration, availableCPUs: Int(CEchoShims_available_cpus()), openFileLimit: limit)
    }

    /// Comment lines for the end of `--check-config`'s output.
    public func rendered(_ configuration: Configuration) -> String {
        var out = "\n# Resolved on this host:\n"
        if configuration.model == .fork {
            out += "# Processes=: not used with Model=fork (one process per connection already).\n"
        } else {
            let how = configuration.processes == .auto ? " (Processes=auto: one per CPU echod may run on)" : ""
            out += "# \(processes) process\(processes == 1 ? "" : "es")\(how), each serving every listener.\n"
        }
        var per = ["MaxConnections=\(connectionsPerProcess)"]
        var all = ["\(connectionsPerProcess * processes) connections"]
        if let workersPerProcess {
            per.insert("\(workersPerProcess) worker thread\(workersPerProcess == 1 ? "" : "s")", at: 0)
            all.insert("\(workersPerProcess * processes) worker threads", at: 0)
        }
        if let threadsPerProcess {
            per.append("MaxThreads=\(threadsPerProcess)")
            all.append("\(threadsPerProcess * processes) threads")
        }
        if configuration.model == .fork {
            per.append("MaxChildren=\(configuration.maxChildren)")
            out += "# \(per.joined(separator: ", ")).\n"
            return out
        }
        out += "# Per process: \(per.joined(separator: ", ")) ([Limits] apply to each process).\n"
        if processes > 1 { out += "# In all: \(all.joined(separator: ", ")).\n" }
        return out
    }
}
