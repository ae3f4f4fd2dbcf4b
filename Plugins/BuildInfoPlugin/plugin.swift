// SPDX-License-Identifier: Apache-2.0
// Generates EchoBuildInfo's constants (version, git commit, Swift version) before every build by
// running scripts/build-info.sh, which rewrites its output only when a value changed, so an
// unchanged tree recompiles nothing.
import Foundation
import PackagePlugin

@main
struct BuildInfoPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let root = context.package.directoryURL
        let output = context.pluginWorkDirectoryURL.appending(path: "generated")
        // The script needs git and swiftc from the caller's PATH.
        var environment: [String: String] = [:]
        if let path = ProcessInfo.processInfo.environment["PATH"] { environment["PATH"] = path }
        // A prebuild command (not a build command): it runs on every build, which is what a
        // commit id needs; SwiftPM's dependency tracking cannot see git's state.
        return [
            .prebuildCommand(
                displayName: "Build information for --version",
                executable: URL(filePath: "/bin/sh"),
                arguments: [root.appending(path: "scripts/build-info.sh").path(), root.path(), output.path()],
                environment: environment,
                outputFilesDirectory: output)
        ]
    }
}
