import DiffusionDaemon
import Foundation

/// The crash soak behind `make soak`: twenty jobs rendered once uninterrupted,
/// then again on a daemon killed with SIGKILL at random moments `kills` times
/// (restarted each time). It reports whether every job succeeded exactly once,
/// how many resumed from a checkpoint, whether every image is bit-identical to
/// the uninterrupted run, and SQLite's integrity check.
func runSoak(kills: Int, options: BenchOptions) throws {
    let jobs: [[String: Any]] = (0..<20).map { index in
        var job: [String: Any] = ["model": "fashion-mnist", "sampler": index % 3 == 0 ? "ddpm" : "ddim",
                                  "steps": 40 + index % 7 * 10, "count": 1 + index % 4, "seed": 9000 + index,
                                  "class": index % 10, "formats": ["npy"]]
        if index % 2 == 1 { job["guidance"] = ["kind": "cfg", "scale": 3.0] }
        return job
    }
    print("soak: 20 jobs, \(kills) kill -9s at random moments, \(options.threads) threads")
    let reference = try ScratchDaemon(batchImages: 1, threads: options.threads)
    let referenceClient = try reference.client()
    let referenceIDs = try jobs.map { job in
        (try referenceClient.call(["verb": "submit", "job": job])["job"] as? [String: Any])?["id"] as? String ?? ""
    }
    try waitAll(referenceClient, referenceIDs)
    let expected = referenceIDs.map { FileManager.default.contents(atPath: "\(reference.root)/state/outputs/\($0)/samples.npy") }

    let daemon = try ScratchDaemon(batchImages: 8, threads: options.threads, checkpointEvery: 5)
    var ids = try jobs.map { job in
        (try daemon.client().call(["verb": "submit", "job": job])["job"] as? [String: Any])?["id"] as? String ?? ""
    }
    var performed = 0
    while performed < kills {
        let pending = try daemon.client().call(["verb": "list", "state": ["queued", "running"]])["jobs"] as? [[String: Any]] ?? []
        if pending.isEmpty {
            // The queue ran dry before the kills did: queue the jobs again.
            ids += try jobs.map { job in
                (try daemon.client().call(["verb": "submit", "job": job])["job"] as? [String: Any])?["id"] as? String ?? ""
            }
        }
        usleep(UInt32.random(in: 50_000...1_500_000))
        daemon.kill9()
        performed += 1
        try daemon.start()
    }
    let client = try daemon.client()
    try waitAll(client, ids)
    var succeededOnce = 0, resumed = 0, identical = 0
    for (index, id) in ids.enumerated() {
        let events = try client.call(["verb": "show", "id": id])["events"] as? [[String: Any]] ?? []
        if events.filter({ $0["state"] as? String == "succeeded" }).count == 1 { succeededOnce += 1 }
        if events.contains(where: { ($0["reason"] as? String)?.hasPrefix("resumed from the checkpoint") == true }) { resumed += 1 }
        let samples = FileManager.default.contents(atPath: "\(daemon.root)/state/outputs/\(id)/samples.npy")
        if samples != nil && samples == expected[index % jobs.count] { identical += 1 }
    }
    daemon.kill9()
    let integrity = try JobStoreCheck.integrity(of: "\(daemon.root)/state/queue.sqlite")
    print("soak: \(performed) kills; \(ids.count) jobs: \(succeededOnce) succeeded exactly once, \(resumed) resumed from a checkpoint, \(identical) bit-identical to the uninterrupted run; integrity_check: \(integrity)")
    if succeededOnce != ids.count || identical != ids.count || integrity != "ok" { exit(1) }
}
