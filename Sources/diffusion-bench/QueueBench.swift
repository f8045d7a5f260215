import DiffusionDaemon
import DiffusionTestSupport
import Foundation

/// Jobs claimed and completed per second through the queue alone: one-step
/// jobs of the Gaussian mixture (`gmm`, microseconds to render), queued on
/// paused hosts, then the hosts resumed and timed until every job succeeded.
/// SQLite on one host; PostgreSQL (a private server this run starts) on 1 and
/// 3 hosts sharing the outputs. Each job is a claim, a lease, a success fenced
/// by its token, and its output directory.
func sharedQueueThroughput() throws {
    let jobs = 600
    var rows: [(String, Double)] = []
    rows.append(("sqlite, 1 host", try throughput(jobs: jobs, hosts: 1, queue: { _ in "" })))
    if PostgresServer.available {
        let server = try PostgresServer()
        defer { server.destroy() }
        for hosts in [1, 3] {
            let url = try server.createDatabase()
            rows.append(("postgresql, \(hosts) host\(hosts == 1 ? "" : "s")", try throughput(jobs: jobs, hosts: hosts, queue: { index in
                "backend = \"postgresql\"\nurl = \"\(url)\"\nhost_name = \"bench-\(index)\""
            })))
        }
    } else {
        print("shared queue: PostgreSQL's server binaries are missing (Debian's postgresql); only SQLite measured")
    }
    let base = rows[0].1
    print("queue throughput (\(jobs) one-step gmm jobs, claimed and completed; jobs/s): "
          + rows.map { String(format: "%@ %.0f (%.2fx SQLite)", $0.0, $0.1, $0.1 / base) }.joined(separator: "; "))
}

private func throughput(jobs: Int, hosts count: Int, queue: (Int) -> String) throws -> Double {
    let outputs = "/tmp/diffusion-bench-outputs-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: outputs, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: outputs) }
    let hosts = try (0..<count).map { try ScratchDaemon(batchImages: 32, threads: 1, queue: queue($0), outputs: outputs) }
    let clients = try hosts.map { try $0.client() }
    for client in clients { _ = try client.call(["verb": "pause"]) }
    var ids: [String] = []
    for index in 0..<jobs {
        let reply = try clients[index % count].call(["verb": "submit", "job": [
            "model": "gmm", "steps": 1, "seed": index, "formats": ["npy"]] as [String: Any]])
        guard let id = (reply["job"] as? [String: Any])?["id"] as? String else { fail("submit refused: \(reply)") }
        ids.append(id)
    }
    let start = DispatchTime.now().uptimeNanoseconds
    for client in clients { _ = try client.call(["verb": "resume"]) }
    while true {
        let stats = try clients[0].call(["verb": "stats"])
        if ((stats["jobs"] as? [String: Any])?["succeeded"] as? Int ?? 0) >= jobs { break }
        usleep(5_000)
    }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    // Until here: a host released early is a daemon stopped early.
    withExtendedLifetime(hosts) {}
    return Double(jobs) / seconds
}
