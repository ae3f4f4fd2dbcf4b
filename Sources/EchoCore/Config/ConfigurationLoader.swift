// SPDX-License-Identifier: Apache-2.0
// Finding and reading the configuration files, with plain Glibc calls: the main file, then
// the drop-ins in `<main>.d/*.conf` in byte order of their names, as systemd reads
// `/etc/systemd/journald.conf.d/` (systemd.syntax(7), "drop-ins").
import Glibc

/// Reads echod's configuration files.
public enum ConfigurationLoader {
    /// Where echod looks when `--config` is not given.
    public static let defaultPath = "/etc/echod/echod.conf"

    /// Files larger than this are refused, so that pointing `--config` at `/dev/zero` fails
    /// instead of eating memory.
    static let maximumFileSize = 1 << 20

    /// Reads the main file and its drop-ins, validates everything.
    ///
    /// The drop-ins are the files `path + ".d/*.conf"`, applied in byte order of their names;
    /// other names, hidden files, directories and symlinks to `/dev/null` (which mask a drop-in
    /// as in systemd) are skipped, and a missing directory is fine. A main file or drop-in that
    /// is not a regular file (a FIFO, a socket, a device other than `/dev/null`) is an error,
    /// found without opening it in a way that could block.
    ///
    /// - Parameters:
    ///   - path: the main file.
    ///   - explicitlyRequested: whether the user named `path`; if not, a missing main file means
    ///     "use the defaults" (drop-ins are still read), otherwise it is an error.
    /// - Returns: the configuration and any warnings.
    /// - Throws: ConfigurationError listing every error.
    public static func load(
        path: String,
        explicitlyRequested: Bool
    ) throws(ConfigurationError) -> (Configuration, [ConfigurationDiagnostic]) {
        var config = Configuration()
        var log = ConfigurationDiagnosticLog()
        var attempted = [path]

        switch readFile(path) {
        case .success(let bytes):
            ConfigurationParser.apply(bytes, file: path, to: &config, log: &log)
        case .failure(let failure):
            if !(failure.isMissing && !explicitlyRequested) {
                log.fileError(failure.message, file: path)
            }
        }

        for dropIn in dropInFiles(in: path + ".d", log: &log) {
            attempted.append(dropIn)
            switch readFile(dropIn) {
            case .success(let bytes):
                ConfigurationParser.apply(bytes, file: dropIn, to: &config, log: &log)
            case .failure(let failure):
                log.fileError(failure.message, file: dropIn)
            }
        }

        ConfigurationParser.validate(config, log: &log)
        return try finish(config, log: log, fileOrder: attempted)
    }

    /// Parses already-read text as if it were file `file` layered on top of `base` (for tests and
    /// for drop-in layering).
    ///
    /// - Parameters:
    ///   - text: the file's contents.
    ///   - file: the name used in diagnostics, origins and `sources`.
    ///   - base: the configuration the text is layered on; `Configuration()` for defaults.
    /// - Returns: the configuration, with `file` appended to `sources`, and any warnings.
    /// - Throws: ConfigurationError listing every error.
    public static func apply(
        text: String,
        file: String,
        to base: Configuration
    ) throws(ConfigurationError) -> (Configuration, [ConfigurationDiagnostic]) {
        var config = base
        var log = ConfigurationDiagnosticLog()
        ConfigurationParser.apply(Array(text.utf8), file: file, to: &config, log: &log)
        ConfigurationParser.validate(config, log: &log)
        return try finish(config, log: log, fileOrder: config.sources)
    }

    private static func finish(
        _ config: Configuration,
        log: ConfigurationDiagnosticLog,
        fileOrder: [String]
    ) throws(ConfigurationError) -> (Configuration, [ConfigurationDiagnostic]) {
        let diagnostics = log.sorted(fileOrder: fileOrder)
        if diagnostics.contains(where: { $0.severity == .error }) {
            throw ConfigurationError(diagnostics: diagnostics)
        }
        return (config, diagnostics)
    }

    /// Why a file could not be read.
    struct ReadFailure: Error {
        /// "path: cannot open: No such file or directory" and the like.
        let message: String
        /// Whether the file does not exist (which is fine for the default path).
        let isMissing: Bool
    }

    /// Reads a whole regular file.
    ///
    /// Anything but a regular file is refused before it is read: a FIFO would block `open(2)`
    /// until a writer came (with SIGTERM blocked for the signalfd, only SIGKILL ended it), and a
    /// device could be read forever. The one exception is `/dev/null`, read as an empty file, as
    /// a symlink to it masks a file in systemd. The file is checked with `stat(2)` before it is
    /// opened (so a device is never opened) and opened with `O_NONBLOCK` then checked again with
    /// `fstat(2)` (so a file swapped for a FIFO in between cannot block the open either).
    ///
    /// - Returns: its bytes, or why they could not be read.
    static func readFile(_ path: String) -> Result<[UInt8], ReadFailure> {
        var status = stat()
        if stat(path, &status) == 0, let refusal = refusal(of: status, path: path) {
            return refusal
        }
        let fd: Int32
        do {
            fd = try syscall("open") { open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY) }
        } catch {
            return .failure(
                ReadFailure(message: "\(path): cannot open: \(error.reason)", isMissing: error.errno == ENOENT))
        }
        defer { close(fd) }
        do {
            _ = try syscall("fstat") { fstat(fd, &status) }
        } catch {
            return .failure(ReadFailure(message: "\(path): cannot stat: \(error.reason)", isMissing: false))
        }
        if let refusal = refusal(of: status, path: path) { return refusal }

        var contents: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let result = buffer.withUnsafeMutableBytes { raw in
                Result { () throws(SystemError) in try syscall("read") { read(fd, raw.baseAddress, raw.count) } }
            }
            let count: Int
            switch result {
            case .success(let n): count = n
            case .failure(let error):
                return .failure(ReadFailure(message: "\(path): cannot read: \(error.reason)", isMissing: false))
            }
            if count == 0 { return .success(contents) }
            contents += buffer[..<count]
            if contents.count > maximumFileSize {
                return .failure(
                    ReadFailure(message: "\(path): file is larger than \(maximumFileSize / 1024) KiB", isMissing: false)
                )
            }
        }
    }

    /// Why a file with `status` is not read, or `nil` if it is: `.success([])` for `/dev/null`,
    /// a failure naming the type for anything else that is not a regular file.
    private static func refusal(of status: stat, path: String) -> Result<[UInt8], ReadFailure>? {
        let type = status.st_mode & S_IFMT
        if type == S_IFREG { return nil }
        if isDevNull(status) { return .success([]) }
        return .failure(
            ReadFailure(message: "\(path): not a regular file (\(fileTypeName(type)))", isMissing: false))
    }

    /// Whether `status` is the null device (character device 1:3, devices(7)).
    static func isDevNull(_ status: stat) -> Bool {
        status.st_mode & S_IFMT == S_IFCHR && status.st_rdev == devNullNumber
    }

    /// The device number of 1:3 in glibc's encoding (`makedev(3)`, a macro Swift cannot call):
    /// the major number's low 8 bits at bits 8-15, the minor's low 8 bits at bits 0-7.
    private static let devNullNumber: dev_t = (1 << 8) | 3

    /// "a FIFO", "a directory" and so on, for messages.
    static func fileTypeName(_ type: mode_t) -> String {
        switch type {
        case S_IFIFO: return "a FIFO"
        case S_IFDIR: return "a directory"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        case S_IFLNK: return "a symbolic link"
        default: return "file type \(String(type, radix: 8))"
        }
    }

    /// The drop-in files of `directory`, as paths, in byte order of their names.
    ///
    /// A missing directory yields none; other failures are logged as errors.
    static func dropInFiles(in directory: String, log: inout ConfigurationDiagnosticLog) -> [String] {
        guard let stream = opendir(directory) else {
            let err = errno
            if err != ENOENT {
                log.fileError(
                    "\(directory): cannot open directory: \(SystemError("opendir", errno: err).reason)", file: directory
                )
            }
            return []
        }
        defer { closedir(stream) }

        let suffix = Array(".conf".utf8)
        var names: [[UInt8]] = []
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                let err = errno
                if err != 0 {
                    log.fileError(
                        "\(directory): cannot read directory: \(SystemError("readdir", errno: err).reason)",
                        file: directory)
                }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            guard name.first != UInt8(ascii: "."), name.count > suffix.count,
                name.suffix(suffix.count).elementsEqual(suffix)
            else { continue }
            names.append(name)
        }
        // Byte order, not locale collation, so that "10-a.conf" < "20-b.conf" < "a.conf" everywhere.
        names.sort { $0.lexicographicallyPrecedes($1) }

        var paths: [String] = []
        for name in names {
            guard let text = String(validating: name, as: UTF8.self) else {
                let shown = String(decoding: name, as: UTF8.self)
                log.fileWarning("\(directory)/\(shown): file name is not valid UTF-8, ignored", file: directory)
                continue
            }
            let path = directory + "/" + text
            // Directories and masks (a symlink to /dev/null, as in systemd) are skipped; other
            // files that are not regular (a FIFO, a socket, a device) are kept, and `readFile`
            // refuses them with an error, as for the main file: a `.conf` that cannot be read
            // is a mistake to report, not to ignore.
            var status = stat()
            if stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR || isDevNull(status) { continue }
            paths.append(path)
        }
        return paths
    }
}
