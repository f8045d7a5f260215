import Foundation
import Logging

/// swift-log lines on stderr, one write per line so lines from the loop and the
/// worker never interleave. When stderr is the journal's stream (systemd.exec(5):
/// `$JOURNAL_STREAM` names stderr's device and inode) each line starts with its
/// sd-daemon priority (`<3>` error … `<7>` debug), which journald reads as the
/// priority; anywhere else (a terminal, a file) it starts with the time and level.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let toJournal: Bool

    public init(level: Logger.Level, toJournal: Bool = JournalLogHandler.stderrIsJournal()) {
        logLevel = level
        self.toJournal = toJournal
    }

    /// Whether `$JOURNAL_STREAM` ("DEVICE:INODE") is the file stderr is.
    public static func stderrIsJournal(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        guard let stream = environment["JOURNAL_STREAM"] else { return false }
        let parts = stream.split(separator: ":").compactMap { UInt64($0) }
        var info = stat()
        guard parts.count == 2, fstat(STDERR_FILENO, &info) == 0 else { return false }
        return UInt64(info.st_dev) == parts[0] && UInt64(info.st_ino) == parts[1]
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let priority: Int
        switch event.level {
        case .trace, .debug: priority = 7
        case .info: priority = 6
        case .notice: priority = 5
        case .warning: priority = 4
        case .error: priority = 3
        case .critical: priority = 2
        }
        let fields = metadata.merging(event.metadata ?? [:]) { $1 }
        let suffix = fields.isEmpty ? "" : " " + fields.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let prefix = toJournal ? "<\(priority)>" : "\(Self.timestamp()) \(event.level.rawValue): "
        let text = "\(prefix)\(event.message)\(suffix)".replacingOccurrences(of: "\n", with: " ") + "\n"
        var bytes = Array(text.utf8)
        _ = Glibc.write(STDERR_FILENO, &bytes, bytes.count)
    }
}

extension JournalLogHandler {
    /// UTC time with milliseconds, as the protocol's timestamps are written.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                      parts.tm_hour, parts.tm_min, parts.tm_sec, now.tv_nsec / 1_000_000)
    }
}

/// The daemon's logger; its level comes from `[log] level`.
public enum DaemonLog {
    public static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { _ in JournalLogHandler(level: level) }
    }
}
