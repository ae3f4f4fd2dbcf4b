// SPDX-License-Identifier: Apache-2.0
// A private directory per test for config files, the notify socket and the child's output.
import Foundation
import Glibc

/// A directory created by mkdtemp(3); removed with everything in it by `withTempDir`.
struct TempDir {
    let path: String

    /// Absolute path of `name` inside the directory.
    func file(_ name: String) -> String { path + "/" + name }

    /// Writes `text` to `name` (creating parent directories) and returns the file's path.
    @discardableResult
    func write(_ name: String, _ text: String) throws -> String {
        let target = file(name)
        let parent = (target as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: target))
        return target
    }

    /// The file's contents as text, or "" when it does not exist yet.
    func read(_ name: String) -> String { readText(file(name)) }
}

/// Text of the file at `path`, or "" if it cannot be read.
func readText(_ path: String) -> String {
    guard let data = FileManager.default.contents(atPath: path) else { return "" }
    return String(decoding: data, as: UTF8.self)
}

/// Runs `body` with a fresh directory under /tmp (short, so that AF_UNIX paths fit in
/// sun_path's 108 bytes) and removes it afterwards, whether `body` returns or throws.
func withTempDir<R>(_ body: (TempDir) throws -> R) throws -> R {
    var template = Array("/tmp/echod-itest.XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { throw HarnessError.system("mkdtemp") }
    let dir = TempDir(path: String(cString: made))
    defer { try? FileManager.default.removeItem(atPath: dir.path) }
    return try body(dir)
}
