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
    /// The drop-ins are the regular files `path + ".d/*.conf"`, applied in byte order of their
    /// names; other names, hidden files and non-regular files (e.g. a symlink to `/dev/null`,
    /// which masks a drop-in as in systemd) are skipped, and a missing directory is fine.
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

    /// Reads a whole file.
    ///
    /// - Returns: its bytes, or why they could not be read.
    static func readFile(_ path: String) -> Result<[UInt8], ReadFailure> {
        let fd: Int32
        do {
            fd = try syscall("open") { open(path, O_RDONLY | O_CLOEXEC) }
        } catch {
            return .failure(
                ReadFailure(message: "\(path): cannot open: \(error.reason)", isMissing: error.errno == ENOENT))
        }
        defer { close(fd) }

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
            var status = stat()
            if stat(path, &status) == 0, status.st_mode & S_IFMT != S_IFREG { continue }
            paths.append(path)
        }
        return paths
    }
}
