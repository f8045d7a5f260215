import DiffusionDaemon
import DiffusionKernels
import DiffusionTestSupport
import Foundation
import Testing

/// A real `diffusiond` in a temporary directory, with its socket and spool, and
/// the real `diffctl` to talk to it.
final class DaemonProcess {
    static let buildDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        .deletingLastPathComponent().path
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    struct Outcome {
        let status: Int32
        let stdout: String
        let stderr: String
        var json: Any? { try? JSONSerialization.jsonObject(with: Data(stdout.utf8)) }
    }

    /// Deadlines stretch by $DIFFUSIOND_TEST_TIME_SCALE (`make sanitize` sets it:
    /// a sanitized debug build renders many times slower).
    static let timeScale = ProcessInfo.processInfo.environment["DIFFUSIOND_TEST_TIME_SCALE"].flatMap(Double.init) ?? 1

    /// $DIFFUSIOND_TEST_QUEUE=postgresql (`make test-postgres`) puts every test daemon's queue in PostgreSQL.
    static let onPostgres = ProcessInfo.processInfo.environment["DIFFUSIOND_TEST_QUEUE"] == "postgresql"
    /// Tests that read the SQLite file or the checkpoint files themselves.
    static let readsSQLiteFiles = ConditionTrait.enabled(if: !onPostgres, "reads the SQLite queue's files, which a PostgreSQL queue has not")

    let root: String
    let socket: String
    let state: String
    let configPath: String
    /// Where the daemon writes previews: the state directory's, or beside a shared queue's outputs.
    let previews: String
    private(set) var process: Process?
    /// A command the daemon is started through (`ip netns exec NAME`), which execs it in place.
    var launcher: [String] = []

    /// Writes a configuration (`extra` is appended as TOML) and starts the daemon.
    /// Jobs render one at a time unless `batchImages` lets them share a batch.
    init(extra: String = "", batchImages: Int = 1, outputs: String = "state/outputs", plugins: [String] = [],
         start: Bool = true) throws {
        root = try Self.temporaryDirectory()
        state = "\(root)/state"
        socket = "\(root)/state/diffusiond.sock"
        configPath = "\(root)/diffusiond.toml"
        var extra = extra
        if Self.onPostgres && !extra.contains("backend =") {
            // `make test-postgres`: the same daemon tests, on a queue in the test run's PostgreSQL server.
            let queue = "[queue]\nbackend = \"postgresql\"\nurl = \"\(try PostgresServer.shared.get().createDatabase())\"\n"
            extra = extra.contains("[queue]\n") ? extra.replacingOccurrences(of: "[queue]\n", with: queue) : extra + "\n" + queue
        }
        let sharedOutputs = outputs.hasPrefix("/") ? outputs : "\(root)/\(outputs)"
        previews = extra.contains("backend = \"postgresql\"") ? "\(sharedOutputs)/.previews" : "\(state)/previews"
        try """
            [paths]
            state = "state"
            socket = "state/diffusiond.sock"
            outputs = "\(outputs)"
            models = ["\(Self.packageRoot)/models", "\(root)/models"]
            plugins = [\(plugins.map { "\"\($0)\"" }.joined(separator: ", "))]
            [render]
            threads = 1
            batch_images = \(batchImages)
            [log]
            level = "debug"
            \(extra)
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
        if start { try self.start() }
    }

    deinit {
        if let process, process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: root)
    }

    static func temporaryDirectory() throws -> String {
        // Short, because a socket path must fit in 108 bytes; 0755, so a second user can reach it.
        let path = "/tmp/dfn-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        return path
    }

    var logPath: String { "\(root)/daemon.log" }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Starts the daemon and waits until it answers a ping.
    /// With `openFiles`, under that RLIMIT_NOFILE (prlimit execs the daemon in place).
    func start(environment: [String: String] = [:], openFiles: Int? = nil) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "\(Self.buildDirectory)/diffusiond")
        process.arguments = ["--config", configPath]
        if let openFiles {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
            process.arguments = ["--nofile=\(openFiles)", "\(Self.buildDirectory)/diffusiond"] + process.arguments!
        }
        if let program = launcher.first {
            process.arguments = Array(launcher.dropFirst()) + [process.executableURL!.path] + process.arguments!
            process.executableURL = URL(fileURLWithPath: program)
        }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        if !FileManager.default.fileExists(atPath: logPath) { _ = FileManager.default.createFile(atPath: logPath, contents: nil) }
        let log = FileHandle(forWritingAtPath: logPath)!
        log.seekToEndOfFile()
        process.standardError = log
        process.standardOutput = log
        try process.run()
        self.process = process
        guard DaemonClient.waitForDaemon(at: socket, seconds: 20, alive: { process.isRunning }) else {
            throw DiffusionError(process.isRunning ? "diffusiond did not answer within 20 s: \(self.log)" : "diffusiond exited at start: \(self.log)")
        }
    }

    /// SIGTERM, then the exit status.
    @discardableResult
    func stop() -> Int32 {
        guard let process else { return -1 }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        self.process = nil
        // A sanitizer's report (or any unclean exit) is in the log: show it with the failure.
        if process.terminationStatus != 0 { print("diffusiond exited \(process.terminationStatus); its log:\n\(log.suffix(12000))") }
        return process.terminationStatus
    }

    func kill9() {
        guard let process else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    func client() throws -> DaemonClient { try DaemonClient(socketPath: socket) }

    /// One request on a fresh connection; a failure carries the end of the daemon's log.
    func call(_ request: [String: Any]) throws -> [String: Any] {
        do {
            return try client().call(request)
        } catch {
            // Whether it died, and by which signal, tells a crash from a closed connection.
            let state = process.map { $0.isRunning ? "still running" : "exited (\($0.terminationReason == .uncaughtSignal ? "signal" : "status") \($0.terminationStatus))" }
            throw DiffusionError("\(error); the daemon is \(state ?? "not started"); its log ends: \(log.suffix(3000))")
        }
    }

    /// Runs diffctl with `--socket`, optionally as another user (through setpriv).
    func diffctl(_ arguments: [String], asUID uid: Int? = nil) throws -> Outcome {
        let binary = "\(Self.buildDirectory)/diffctl"
        guard let uid else { return try Self.run(binary, ["--socket", socket] + arguments) }
        return try Self.run("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=0", "--clear-groups", binary, "--socket", socket] + arguments)
    }

    /// Runs a program to its end, capturing what it prints.
    static func run(_ executable: String, _ arguments: [String]) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let (out, err) = (Pipe(), Pipe())
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                       stderr: String(decoding: stderr, as: UTF8.self))
    }

    /// Submits `job` over the socket; returns its id.
    func submit(_ job: [String: Any]) throws -> String {
        let reply = try call(["verb": "submit", "job": job])
        guard reply["ok"] as? Bool == true, let record = reply["job"] as? [String: Any], let id = record["id"] as? String else {
            throw DiffusionError("submit refused: \(reply)")
        }
        return id
    }

    func job(_ id: String) throws -> [String: Any] {
        let reply = try call(["verb": "show", "id": id])
        guard let job = reply["job"] as? [String: Any] else { throw DiffusionError("no job \(id): \(reply)") }
        return job
    }

    /// Waits until job `id` is in `state`.
    @discardableResult
    func wait(for id: String, state: String, seconds: Double = 60) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(seconds * Self.timeScale)
        var last: [String: Any] = [:]
        while Date() < deadline {
            last = try job(id)
            if last["state"] as? String == state { return last }
            usleep(20_000)
        }
        throw DiffusionError("job \(id) is \(last["state"] ?? "?"), not \(state), after \(seconds) s: \(last)")
    }

    /// Drops `contents` into the spool the documented way: write in tmp/, rename into new/.
    func drop(_ name: String, _ contents: String) throws {
        let tmp = "\(state)/spool/tmp/\(name)"
        try contents.write(toFile: tmp, atomically: false, encoding: .utf8)
        guard rename(tmp, "\(state)/spool/new/\(name)") == 0 else { throw DiffusionError("rename failed") }
    }

    /// The id of the job the spool file `name` became, once the daemon has taken it in (30 s at most).
    func spooledJob(_ name: String) throws -> String {
        let deadline = Date().addingTimeInterval(30 * Self.timeScale)
        while Date() < deadline {
            let jobs = try call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []
            if let id = jobs.first(where: { $0["source"] as? String == "spool \(name)" })?["id"] as? String { return id }
            usleep(50_000)
        }
        throw DiffusionError("the spool file \(name) was not taken in")
    }

    /// A small job of the default model.
    static func smallJob(steps: Int = 4, count: Int = 1, seed: Int = 1, label: Int = 7) -> [String: Any] {
        ["model": "fashion-mnist", "sampler": "ddim", "steps": steps, "count": count, "seed": seed, "class": label]
    }
}
