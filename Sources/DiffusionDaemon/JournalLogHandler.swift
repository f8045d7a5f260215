import Foundation
import Logging

/// swift-log lines on stderr with sd-daemon priority prefixes (`<3>` error …
/// `<7>` debug), which journald reads as the message's priority; one write per
/// line, so lines from the loop and the worker never interleave.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    public init(level: Logger.Level) { logLevel = level }

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
        let text = "<\(priority)>\(event.message)\(suffix)".replacingOccurrences(of: "\n", with: " ") + "\n"
        var bytes = Array(text.utf8)
        _ = Glibc.write(STDERR_FILENO, &bytes, bytes.count)
    }
}

/// The daemon's logger; its level comes from `[log] level`.
public enum DaemonLog {
    public static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { _ in JournalLogHandler(level: level) }
    }
}
