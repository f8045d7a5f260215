import DiffusionRender
import DiffusionKernels
import Foundation
import Logging

/// The daemon's configuration, `etc/diffusiond.toml` (documented key by key in
/// that file). Every key is optional; relative paths are relative to the file.
/// An unknown key or a value of the wrong type is an error that names the key.
public struct DaemonConfig: Sendable {
    public var stateDirectory = "/var/lib/diffusiond"
    public var spoolDirectory: String?
    public var socketPath = "/run/diffusiond.sock"
    public var databasePath: String?
    public var outputsDirectory: String?
    /// Added before the built-in directories.
    public var pluginDirectories: [String] = []
    public var modelDirectories: [String] = []

    public var threads = ProcessInfo.processInfo.activeProcessorCount
    /// Images of compatible jobs rendered in one U-Net batch.
    public var batchImages = 32
    public var limits = RenderLimits()
    /// Seconds a job may render (a job's own `time_limit` may only ask for less).
    public var jobSeconds = 3600.0
    public var maxRequestBytes = 16 << 20
    /// Unfinished request lines of all clients together.
    public var socketBufferBytes = 64 << 20
    public var connectionsPerUser = 256
    /// Jobs (queued, held or running) and their images one user may have at once (0: no limit).
    public var jobsPerUser = 0
    public var imagesPerUser = 0
    /// Members of this group may act on every user's jobs, as root may.
    public var adminGroup: String?
    /// Seconds a connection that watches nothing may stay silent (0: forever).
    public var idleSeconds = 300.0
    /// Where the queue lives: a SQLite file of this host's, or a PostgreSQL
    /// database that several hosts share (docs/cluster.md).
    public enum QueueBackend: String, Sendable, CaseIterable { case sqlite, postgresql }
    public var queueBackend = QueueBackend.sqlite
    /// A libpq connection URI (the postgresql backend).
    public var queueURL: String?
    /// How long a claim lasts unless its host renews it.
    public var leaseSeconds = 30.0
    /// This host's name in leases, events and receipts.
    public var hostName = ProcessInfo.processInfo.hostName
    public var maxAttempts = 3
    public var retryBackoffSeconds = 10.0
    /// Unclean exits in a row while a job ran after which it is failed (0: never).
    public var poisonAfterCrashes = 2
    public var checkpointEverySteps = 10
    public var previewEverySteps = 0
    public var keepJobs = 1000
    public var keepDays = 30.0
    /// Hours after which an abandoned spool file (in tmp/, or unreadable in new/) is removed.
    public var spoolTmpMaxAgeHours = 36.0
    public var modelCacheMB = 1024
    /// Where the metrics are written for node_exporter, and how often.
    public var metricsTextfile: String?
    public var metricsIntervalSeconds = 15.0
    public var logLevel = Logger.Level.info

    public var spool: String { spoolDirectory ?? "\(stateDirectory)/spool" }
    public var database: String { databasePath ?? "\(stateDirectory)/queue.sqlite" }
    public var outputs: String { outputsDirectory ?? "\(stateDirectory)/outputs" }
    /// The queue's file, or its database's URL with the password masked.
    public var queueLocation: String { queueBackend == .sqlite ? database : PostgresDatabase.redacted(queueURL ?? "") }
    public var checkpoints: String { "\(stateDirectory)/checkpoints" }
    /// Previews of a shared queue's jobs are beside its outputs, so that a host
    /// watching a job another host runs can show them.
    public var previews: String { queueBackend == .sqlite ? "\(stateDirectory)/previews" : "\(outputs)/.previews" }
    /// A running job's latest preview.
    public func previewPath(of id: Int) -> String { "\(previews)/\(id).png" }

    public init() {}

    /// Reads `path`; a missing file is an error (the defaults need no file).
    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw DiffusionError("\(path): cannot read the file") }
        try self.init(contents: data, path: path)
    }

    /// A configuration file's bytes, as read from `path` (errors name it).
    public init(contents data: Data, path: String) throws {
        let base = URL(fileURLWithPath: path).standardized.deletingLastPathComponent().path
        let document: TOMLDocument
        do {
            document = try TOMLDocument(String(decoding: data, as: UTF8.self))
        } catch let error as TOMLDocument.ParseError {
            throw DiffusionError("\(path): \(error)")
        }
        func resolve(_ value: String) -> String {
            URL(fileURLWithPath: value.hasPrefix("/") ? value : "\(base)/\(value)").standardized.path
        }
        for (key, value, line) in document.values {
            func fail(_ what: String) -> DiffusionError { DiffusionError("\(path):\(line): \(key) must be \(what)") }
            func text() throws -> String {
                guard let text = value as? String, !text.isEmpty else { throw fail("a non-empty string") }
                return text
            }
            func paths() throws -> [String] {
                guard let list = value as? [Any], let texts = list as? [String], !texts.contains("") else {
                    throw fail("a list of paths")
                }
                return texts.map(resolve)
            }
            func integer(_ range: ClosedRange<Int>) throws -> Int {
                guard let number = value as? Int, range.contains(number) else {
                    throw fail("a whole number in \(range.lowerBound)...\(range.upperBound)")
                }
                return number
            }
            func seconds() throws -> Double {
                let number = (value as? Int).map(Double.init) ?? value as? Double
                guard let number, number >= 0 else { throw fail("a number of seconds, 0 or more") }
                return number
            }
            switch key {
            case "paths.state": stateDirectory = resolve(try text())
            case "paths.spool": spoolDirectory = resolve(try text())
            case "paths.socket": socketPath = resolve(try text())
            case "paths.database": databasePath = resolve(try text())
            case "paths.outputs": outputsDirectory = resolve(try text())
            case "paths.plugins": pluginDirectories = try paths()
            case "paths.models": modelDirectories = try paths()
            case "render.threads": threads = try integer(1...256)
            case "render.batch_images": batchImages = try integer(1...10_000)
            case "limits.max_steps": limits.maxSteps = try integer(1...100_000)
            case "limits.max_count": limits.maxCount = try integer(1...100_000)
            case "limits.max_pixels": limits.maxPixels = try integer(1...(1 << 26))
            case "limits.job_seconds": jobSeconds = try seconds()
            case "limits.max_request_bytes": maxRequestBytes = try integer(1024...(1 << 30))
            case "limits.socket_buffer_bytes": socketBufferBytes = try integer(1024...(1 << 34))
            case "limits.connections_per_user": connectionsPerUser = try integer(1...100_000)
            case "limits.idle_seconds": idleSeconds = try seconds()
            case "limits.jobs_per_user": jobsPerUser = try integer(0...100_000_000)
            case "limits.images_per_user": imagesPerUser = try integer(0...100_000_000)
            case "access.admin_group": adminGroup = try text()
            case "queue.backend":
                guard let backend = QueueBackend(rawValue: try text()) else {
                    throw fail("one of \(QueueBackend.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                queueBackend = backend
            case "queue.url": queueURL = try text()
            case "queue.lease_seconds":
                leaseSeconds = try seconds()
                guard leaseSeconds >= 1 else { throw fail("at least 1 second") }
            case "queue.host_name": hostName = try text()
            case "queue.max_attempts": maxAttempts = try integer(1...100)
            case "queue.retry_backoff_seconds": retryBackoffSeconds = try seconds()
            case "queue.poison_after_crashes": poisonAfterCrashes = try integer(0...100)
            case "checkpoint.every_steps": checkpointEverySteps = try integer(0...1_000_000)
            case "previews.every_steps": previewEverySteps = try integer(0...1_000_000)
            case "history.keep_jobs": keepJobs = try integer(0...100_000_000)
            case "history.keep_days": keepDays = try seconds()
            case "spool.tmp_max_age_hours": spoolTmpMaxAgeHours = try seconds()
            case "models.cache_mb": modelCacheMB = try integer(0...1_000_000)
            case "metrics.textfile": metricsTextfile = resolve(try text())
            case "metrics.interval_seconds": metricsIntervalSeconds = try seconds()
            case "log.level":
                guard let level = Logger.Level(rawValue: try text()) else {
                    throw fail("one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                logLevel = level
            default:
                throw DiffusionError("\(path):\(line): unknown key \(key) (etc/diffusiond.toml lists every key)")
            }
        }
        if queueBackend == .postgresql && queueURL == nil {
            throw DiffusionError("\(path): [queue] backend = \"postgresql\" needs [queue] url (a libpq URI, e.g. postgresql:///diffusiond?host=/run/postgresql)")
        }
    }

    /// Plugin directories: the configured ones, then the built-in ones.
    public var allPluginDirectories: [String] { pluginDirectories + PluginRegistry.defaultDirectories() }

    /// Model directories: the configured ones, then the installed models.
    public var allModelDirectories: [String] { modelDirectories + [ModelResolver.installedModels] }
}
