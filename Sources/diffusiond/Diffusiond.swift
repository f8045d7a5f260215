// diffusiond: the render daemon's command line. The work happens in the library
// modules; this file only parses arguments and prints.
import ArgumentParser
import DiffusionDaemon
import DiffusionRender
import DiffusionKernels
import Foundation

@main
struct Diffusiond: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A batch render daemon for diffusion models on CPUs.",
        discussion: "Without a subcommand, runs the daemon in the foreground (docs/protocol.md, etc/diffusiond.toml).",
        version: RenderOutput.programVersion,
        subcommands: [Serve.self, CheckConfig.self, RenderJob.self, MigrateQueue.self], defaultSubcommand: Serve.self)
}

/// Reads the configuration, or the defaults without `--config`; a bad file is one line and exit 1.
func loadConfig(_ path: String?) throws -> DaemonConfig {
    guard let path else { return DaemonConfig() }
    do {
        return try DaemonConfig(path: path)
    } catch let error as DiffusionError {
        FileHandle.standardError.write(Data("diffusiond: \(error.message)\n".utf8))
        throw ExitCode(1)
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the daemon in the foreground (the default).")

    @Option(help: "The configuration file (etc/diffusiond.toml documents every key).") var config: String?

    func run() throws {
        let settings = try loadConfig(config)
        DaemonLog.bootstrap(level: settings.logLevel)
        do {
            let daemon = try Daemon(config: settings, path: config)
            let status = try daemon.run()
            throw ExitCode(status)
        } catch let error as ExitCode {
            throw error
        } catch {
            FileHandle.standardError.write(Data("<3>diffusiond: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config", abstract: "Check a configuration file and print the settings it gives.")

    @Option(help: "The configuration file.") var config: String?

    func run() throws {
        let settings = try loadConfig(config)
        print("""
            state      \(settings.stateDirectory)
            spool      \(settings.spool)
            socket     \(settings.socketPath)
            database   \(settings.database)
            outputs    \(settings.outputs)
            plugins    \(settings.allPluginDirectories.joined(separator: ", "))
            models     \(settings.allModelDirectories.joined(separator: ", "))
            threads    \(settings.threads)
            limits     steps \(settings.limits.maxSteps), count \(settings.limits.maxCount), pixels \(settings.limits.maxPixels), \(settings.jobSeconds) s per job
            queue      \(settings.queueBackend.rawValue) \(settings.queueLocation), host \(settings.hostName), lease \(settings.leaseSeconds) s, \(settings.maxAttempts) attempts, backoff \(settings.retryBackoffSeconds) s
            history    \(settings.keepJobs) jobs, \(settings.keepDays) days
            log        \(settings.logLevel.rawValue)
            """)
    }
}

struct MigrateQueue: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-queue",
        abstract: "Copy this host's SQLite queue into an empty PostgreSQL database (docs/cluster.md).",
        discussion: "Stop the daemon first. Then set [queue] backend = \"postgresql\" and url in the configuration and start it again.")

    @Option(help: "The configuration file (its [paths] database and checkpoints are the source).") var config: String?
    @Option(help: "The target database, a libpq URI; its tables are created if missing and must hold no job.") var to: String

    func run() throws {
        let settings = try loadConfig(config)
        do {
            let counts = try QueueMigration.run(config: settings, to: to)
            print("copied \(counts.jobs) job(s), \(counts.events) event(s) and \(counts.checkpoints) checkpoint(s) from \(settings.database)")
        } catch {
            FileHandle.standardError.write(Data("diffusiond: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct RenderJob: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "render", abstract: "Render one job file into a directory, without a daemon.")

    @Argument(help: "The job file (docs/jobs.md).") var job: String
    @Option(help: "The directory for the images (created).") var output: String?
    @Flag(help: "Check the job against its model and the plugins, print it resolved, and render nothing.")
    var dryRun = false
    @Option(help: "A configuration file whose limits, threads, plugin and model directories apply.") var config: String?
    @Option(name: .customLong("models"), help: "A directory of named models (repeatable).") var modelDirectories: [String] = []
    @Option(name: .customLong("plugins"), help: "A plugin directory (repeatable; default: beside this program and the installed one).")
    var pluginDirectories: [String] = []
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @Flag(help: "No progress lines.") var quiet = false

    func run() throws {
        var render = OneShotRender()
        if let config {
            let settings = try loadConfig(config)
            render.limits = settings.limits
            render.threads = settings.threads
            render.pluginDirectories = settings.allPluginDirectories
            render.modelDirectories = settings.allModelDirectories
        }
        render.modelDirectories = modelDirectories + render.modelDirectories
        if !pluginDirectories.isEmpty { render.pluginDirectories = pluginDirectories }
        if let threads {
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
            render.threads = threads
        }
        do {
            if dryRun {
                let data = try JSONSerialization.data(withJSONObject: try render.plan(jobPath: job).resolvedJob,
                                                      options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            guard let output else { throw ValidationError("--output is required (or --dry-run)") }
            let stages = try render.plan(jobPath: job).stages.count
            let done = try render.run(jobPath: job, outputDirectory: output) { stage, step, total in
                if !quiet && (step == total || step % max(total / 10, 1) == 0) {
                    let prefix = stages > 1 ? "stage \(stage + 1)/\(stages) " : ""
                    FileHandle.standardError.write(Data("\(prefix)step \(step)/\(total)\n".utf8))
                }
            }
            let samplers = done.plan.stages.map(\.samplerName).joined(separator: " + ")
            print("rendered \(done.job.count) image(s) with \(samplers) in \(done.plan.totalSteps) steps into \(output)")
        } catch let error as DiffusionError {
            FileHandle.standardError.write(Data("diffusiond: \(error.message)\n".utf8))
            throw ExitCode(1)
        }
    }
}
