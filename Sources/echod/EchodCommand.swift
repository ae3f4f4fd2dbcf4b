// SPDX-License-Identifier: Apache-2.0
// echod's entry point: flags, configuration, then EchoCore.Daemon. Wiring only.
import ArgumentParser
import EchoBuildInfo
import EchoCore
import EchoSystemd
import Glibc
import Logging

@main
struct EchodCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echod",
        abstract: "An RFC 862 echo daemon for comparing concurrency models.",
        discussion: """
            Reads its configuration from \(ConfigurationLoader.defaultPath) and the drop-ins in \
            \(ConfigurationLoader.defaultPath).d/*.conf. Under systemd it serves the sockets of \
            echod.socket and reports readiness with sd_notify; otherwise it binds the Listen= \
            addresses. SIGHUP reloads the configuration; SIGTERM stops gracefully.
            Exit status: 0 on a clean stop, 1 on a runtime failure, 78 on a configuration error.
            """,
        version: BuildInfo.versionText(program: "echod")
    )

    @Option(name: .long, help: ArgumentHelp("Configuration file to read.", valueName: "path"))
    var config: String?

    @Flag(name: .customLong("check-config"), help: "Validate the configuration, print the effective settings, and exit.")
    var checkConfig = false

    mutating func run() throws {
        // Before any thread exists: these signals are read from a signalfd by the control thread.
        Signals.block(daemonSignals)
        Signals.ignoreSIGPIPE()

        let levelSetting = LogLevelSetting(.info)
        let logger = Logger(label: "echod") { EchodLogHandler(label: $0, setting: levelSetting) }
        let notifier: ServiceNotifier = checkConfig ? NoNotifier() : SystemdNotifier()
        let source = ConfigurationSource(
            path: config ?? ConfigurationLoader.defaultPath, explicitlyRequested: config != nil)

        let configuration: Configuration
        do {
            configuration = try source.loadReportingDiagnostics()
        } catch {
            let first = error.diagnostics.first.map { "\($0)" } ?? "invalid configuration"
            notifier.notify("STATUS=Configuration error: \(first)\nERRNO=\(EINVAL)")
            throw ExitCode(ExitStatus.config)
        }

        if checkConfig {
            print(configuration.rendered(), terminator: "")
            print(ProcessPlan.forThisHost(configuration).rendered(configuration), terminator: "")
            return
        }
        levelSetting.level = configuration.logLevel

        let passed: [PassedDescriptor]
        do {
            passed = try ListenFDs.take()
        } catch {
            logger.critical("invalid socket activation environment", metadata: ["error": "\(error)"])
            notifier.notify("STATUS=Invalid socket activation environment: \(error)\nERRNO=\(error.errno)")
            throw ExitCode(ExitStatus.failure)
        }

        let daemon = Daemon(
            configuration: configuration, source: source, passed: passed,
            notifier: notifier, logLevel: levelSetting, logger: logger)
        do {
            try daemon.run()
        } catch {
            logger.critical("\(error.message)")
            throw ExitCode(error.exitStatus)
        }
    }
}
