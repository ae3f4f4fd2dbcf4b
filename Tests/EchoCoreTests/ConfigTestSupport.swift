// SPDX-License-Identifier: Apache-2.0
// Helpers for the configuration tests: parsing shortcuts and scoped temporary directories.
import EchoCore
import Glibc
import Testing

/// Fixtures for the configuration tests, in a namespace so that they cannot clash with
/// helpers of other suites in this module.
enum ConfigFixture {
    /// `config` with `origins` and `sources` cleared, to compare settings only.
    static func settingsOnly(_ config: Configuration) -> Configuration {
        var config = config
        config.origins = [:]
        config.sources = []
        return config
    }

    /// Defaults with `change` applied.
    static func defaults(_ change: (inout Configuration) -> Void) -> Configuration {
        var config = Configuration()
        change(&config)
        return config
    }

    /// Applies `text` as file `test.conf` on top of `base`.
    static func parse(_ text: String, file: String = "test.conf", on base: Configuration = Configuration())
        throws(ConfigurationError)
        -> Configuration
    {
        try ConfigurationLoader.apply(text: text, file: file, to: base).0
    }

    /// The diagnostics `text` is rejected with, one string each; empty if it is accepted.
    static func rejection(of text: String, file: String = "test.conf", on base: Configuration = Configuration())
        -> [String]
    {
        do {
            _ = try ConfigurationLoader.apply(text: text, file: file, to: base)
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    /// The diagnostics `load` rejects the files with; empty if they are accepted.
    static func loadRejection(path: String, explicitlyRequested: Bool = true) -> [String] {
        do {
            _ = try ConfigurationLoader.load(path: path, explicitlyRequested: explicitlyRequested)
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    /// Runs `body` with a fresh directory from mkdtemp(3), removed with its contents afterwards.
    static func withTempDirectory<R>(_ body: (String) throws -> R) throws -> R {
        var template = Array("/tmp/echod-config-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil, "mkdtemp: \(String(cString: strerror(errno)))")
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { removeTree(path) }
        return try body(path)
    }

    /// Deletes `path`, and everything under it if it is a directory (symlinks are not followed).
    static func removeTree(_ path: String) {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFDIR else {
            unlink(path)
            return
        }
        if let stream = opendir(path) {
            var names: [String] = []
            while let entry = readdir(stream) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) {
                    String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != ".", name != ".." { names.append(name) }
            }
            closedir(stream)
            for name in names { removeTree(path + "/" + name) }
        }
        rmdir(path)
    }

    /// Creates or replaces file `path` with `bytes`.
    static func writeFile(_ path: String, bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        try #require(fd >= 0, "open \(path): \(String(cString: strerror(errno)))")
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        try #require(written == bytes.count, "write \(path)")
    }

    /// Creates or replaces file `path` with `text`.
    static func writeFile(_ path: String, _ text: String) throws {
        try writeFile(path, bytes: Array(text.utf8))
    }

    /// Creates directory `path`.
    static func makeDirectory(_ path: String) throws {
        try #require(mkdir(path, 0o755) == 0, "mkdir \(path): \(String(cString: strerror(errno)))")
    }

    /// Reads a whole text file, for checks on the shipped files.
    static func readTextFile(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        try #require(fd >= 0, "open \(path): \(String(cString: strerror(errno)))")
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            try #require(count >= 0, "read \(path)")
            if count == 0 { break }
            bytes += buffer[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The repository's root, found from this source file's path.
    static func repositoryRoot(filePath: String = #filePath) -> String {
        // .../Tests/EchoCoreTests/ConfigTestSupport.swift: three components up.
        var components = filePath.split(separator: "/", omittingEmptySubsequences: false)
        components.removeLast(3)
        return components.joined(separator: "/")
    }
}
