// SPDX-License-Identifier: Apache-2.0
// What `echod --version` and `echoload --version` print. The values come from
// BuildInfo+Generated.swift, which the BuildInfoPlugin writes before every build
// (scripts/build-info.sh): debian/changelog's version, the git commit, the Swift version.

/// The version and build of this binary.
public enum BuildInfo {
    /// The release, e.g. "0.2.0" (debian/changelog's first entry, without the Debian revision).
    public static let version = generatedVersion

    /// The git commit the binary was built from, abbreviated, with "+dirty" when tracked files
    /// had uncommitted changes; nil when it was not built from a git work tree.
    public static let commit: String? = generatedCommit.isEmpty ? nil : generatedCommit

    /// The compiler's version line, e.g. "Swift version 6.3.1 (swift-6.3.1-RELEASE)".
    public static let swiftVersion = generatedSwiftVersion

    /// The text of `--version`: the program and version on the first line, the build on the second.
    ///
    ///     echod 0.2.0
    ///     built from git commit c391e00e9866 with Swift version 6.3.1 (swift-6.3.1-RELEASE)
    public static func versionText(program: String) -> String {
        let source = commit.map { "git commit \($0)" } ?? "a source tree outside git"
        return "\(program) \(version)\nbuilt from \(source) with \(swiftVersion)"
    }
}
