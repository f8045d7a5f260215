import DiffusionDaemon
import Foundation

/// The daemon under load, through its real binary and socket: how long a
/// submit takes with a growing queue, and what rendering compatible jobs in
/// one batch gains over rendering them one after another.
func runDaemonBench(_ options: BenchOptions) throws {
    print("\nThe daemon (diffusiond from this build, the default model, \(options.threads) threads)")
    try queueLoad(options)
    try batching(options)
    try sharedQueueThroughput()
}

/// A diffusiond in a scratch directory, stopped and removed at the end.
final class ScratchDaemon {
    let root: String
    let socket: String
    private var process: Process?

    /// `queue`: the body of a `[queue]` table (the backend and its settings).
    init(batchImages: Int, threads: Int, checkpointEvery: Int = 10, queue: String = "", outputs: String = "state/outputs") throws {
        root = "/tmp/diffusion-bench-\(UUID().uuidString.prefix(8))"
        socket = "\(root)/state/diffusiond.sock"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let models = repository.appendingPathComponent("models").path
        // The Gaussian mixture `gmm`, which renders in microseconds: the queue's own cost.
        let fixtures = repository.appendingPathComponent("Tests/DiffusionRenderTests/Fixtures").path
        try """
            [paths]
            state = "state"
            socket = "state/diffusiond.sock"
            outputs = "\(outputs)"
            models = ["\(models)", "\(fixtures)"]
            [render]
            threads = \(threads)
            batch_images = \(batchImages)
            [checkpoint]
            every_steps = \(checkpointEvery)
            [history]
            keep_jobs = 100000
            [queue]
            # The soak kills the daemon on purpose, many times per job.
            poison_after_crashes = 0
            \(queue)
            [log]
            level = "warning"
            """.write(toFile: "\(root)/diffusiond.toml", atomically: true, encoding: .utf8)
        try start()
    }

    /// Starts the daemon and waits until it answers.
    func start() throws {
        let process = Process()
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("diffusiond").path
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--config", "\(root)/diffusiond.toml"]
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        self.process = process
        guard DaemonClient.waitForDaemon(at: socket, seconds: 20, alive: { process.isRunning }) else { fail("diffusiond did not start") }
    }

    func kill9() {
        guard let process else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    func client() throws -> DaemonClient { try DaemonClient(socketPath: socket) }

    deinit {
        if let process {
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: root)
    }
}

private func milliseconds(since start: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6 }

private func percentile(_ sorted: [Double], _ p: Double) -> Double { sorted[min(Int(Double(sorted.count) * p), sorted.count - 1)] }

/// Submits `--queue-jobs` one-step jobs over one connection while the daemon
/// renders them, timing each reply; then a `list` and a `stats` on the full queue.
private func queueLoad(_ options: BenchOptions) throws {
    let daemon = try ScratchDaemon(batchImages: 32, threads: options.threads)
    let client = try daemon.client()
    var latencies: [Double] = []
    let start = DispatchTime.now().uptimeNanoseconds
    for index in 0..<options.queueJobs {
        let job: [String: Any] = ["model": "fashion-mnist", "sampler": "ddim", "steps": 1, "seed": index, "class": index % 10]
        let sent = DispatchTime.now().uptimeNanoseconds
        let reply = try client.call(["verb": "submit", "job": job])
        latencies.append(milliseconds(since: sent))
        guard reply["ok"] as? Bool == true else { fail("submit refused: \(reply)") }
    }
    let seconds = milliseconds(since: start) / 1000
    latencies.sort()
    let listStart = DispatchTime.now().uptimeNanoseconds
    _ = try client.call(["verb": "list"])
    let listMs = milliseconds(since: listStart)
    let stats = try client.call(["verb": "stats"])
    let done = (stats["jobs"] as? [String: Any])?["succeeded"] as? Int ?? 0
    print(String(format: "queue: %d submits over one connection in %.1f s (%.0f/s): p50 %.2f ms, p99 %.2f ms, max %.1f ms;",
                 options.queueJobs, seconds, Double(options.queueJobs) / seconds, percentile(latencies, 0.5),
                 percentile(latencies, 0.99), latencies.last ?? 0)
          + String(format: " list of the newest 100 with %d jobs stored: %.1f ms; %d rendered meanwhile", options.queueJobs, listMs, done))
}

/// Eight small jobs (one image, 50 DDIM steps, each its own class and seed),
/// queued together, on a daemon that renders one job at a time and on one
/// that batches them; the images must be the same bits either way.
private func batching(_ options: BenchOptions) throws {
    var seconds: [Double] = []
    var samples: [[Data]] = []
    for batchImages in [1, 32] {
        let daemon = try ScratchDaemon(batchImages: batchImages, threads: options.threads)
        let client = try daemon.client()
        // A warm-up job loads the model, so both runs time rendering only.
        let warm = try client.call(["verb": "submit", "job": ["model": "fashion-mnist", "steps": 1, "seed": 0, "sampler": "ddim"]])
        try waitAll(client, [(warm["job"] as? [String: Any])?["id"] as? String ?? ""])
        let start = DispatchTime.now().uptimeNanoseconds
        var ids: [String] = []
        for index in 0..<8 {
            let job: [String: Any] = ["model": "fashion-mnist", "sampler": "ddim", "steps": 50, "seed": 100 + index,
                                      "class": index, "formats": ["npy"]]
            let reply = try client.call(["verb": "submit", "job": job])
            ids.append((reply["job"] as? [String: Any])?["id"] as? String ?? "")
        }
        try waitAll(client, ids)
        seconds.append(milliseconds(since: start) / 1000)
        samples.append(ids.map { FileManager.default.contents(atPath: "\(daemon.root)/state/outputs/\($0)/samples.npy") ?? Data() })
    }
    let identical = samples[0] == samples[1] && !samples[0].contains(Data())
    print(String(format: "batching: 8 jobs of 1 image, 50 steps: one after another %.2f s, batched %.2f s: %.2fx faster; images bit-identical: %@",
                 seconds[0], seconds[1], seconds[0] / seconds[1], identical ? "yes" : "NO"))
}

func waitAll(_ client: DaemonClient, _ ids: [String]) throws {
    for id in ids {
        while true {
            let job = try client.call(["verb": "show", "id": id])["job"] as? [String: Any] ?? [:]
            let state = job["state"] as? String ?? ""
            if state == "succeeded" { break }
            if state == "failed" || state == "canceled" { fail("job \(id) \(state): \(job["error"] ?? "")") }
            usleep(5_000)
        }
    }
}
