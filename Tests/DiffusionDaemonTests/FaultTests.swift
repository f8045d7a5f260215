import DiffusionKernels
import DiffusionTestSupport
import Foundation
import Testing
@testable import DiffusionDaemon

/// Hosts the test makes itself: a bridge on the test's own address range in
/// the root namespace, and per host a network namespace joined to it by a veth
/// pair. Everything is removed by `destroy`.
final class TestNetwork {
    let bridge: String
    /// 10.213.N.0/24, N from the test process's pid.
    let prefix: String
    var bridgeAddress: String { "\(prefix).1" }
    private(set) var namespaces: [String] = []
    private let tag: String

    /// Whether this process may make namespaces (root, iproute2, a kernel that lets it).
    static let available: Bool = {
        guard geteuid() == 0, FileManager.default.fileExists(atPath: "/usr/sbin/ip") || FileManager.default.fileExists(atPath: "/sbin/ip")
        else { return false }
        let name = "dfn-probe-\(getpid())"
        guard (try? ip(["netns", "add", name])) != nil else { return false }
        _ = try? ip(["netns", "del", name])
        return true
    }()

    init() throws {
        tag = String(format: "%04x", getpid() & 0xffff)
        bridge = "dfb\(tag)"
        prefix = "10.213.\(Int(getpid()) % 250 + 1)"
        try Self.ip(["link", "add", bridge, "type", "bridge"])
        try Self.ip(["addr", "add", "\(bridgeAddress)/24", "dev", bridge])
        try Self.ip(["link", "set", bridge, "up"])
    }

    /// A new host; returns its namespace's name (its address is `address(of:)`).
    func addHost() throws -> String {
        let index = namespaces.count
        let namespace = "dfn-\(tag)-\(index)"
        let (outside, inside) = (link(index), "dfi\(tag)\(index)")
        try Self.ip(["netns", "add", namespace])
        try Self.ip(["link", "add", outside, "type", "veth", "peer", "name", inside])
        try Self.ip(["link", "set", inside, "netns", namespace])
        try Self.ip(["link", "set", outside, "master", bridge, "up"])
        try Self.ip(["-n", namespace, "addr", "add", "\(address(of: index))/24", "dev", inside])
        try Self.ip(["-n", namespace, "link", "set", inside, "up"])
        try Self.ip(["-n", namespace, "link", "set", "lo", "up"])
        namespaces.append(namespace)
        return namespace
    }

    func address(of index: Int) -> String { "\(prefix).\(10 + index)" }
    private func link(_ index: Int) -> String { "dfo\(tag)\(index)" }

    /// Cuts host `index` off (its link down) or heals it.
    func partition(_ index: Int, _ cut: Bool) throws { try Self.ip(["link", "set", link(index), cut ? "down" : "up"]) }

    func destroy() {
        for (index, namespace) in namespaces.enumerated() {
            _ = try? Self.ip(["link", "del", link(index)])
            _ = try? Self.ip(["netns", "del", namespace])
        }
        _ = try? Self.ip(["link", "del", bridge])
    }

    @discardableResult
    static func ip(_ arguments: [String]) throws -> String {
        let outcome = try DaemonProcess.run("/usr/sbin/ip", arguments)
        guard outcome.status == 0 else { throw DiffusionError("ip \(arguments.joined(separator: " ")): \(outcome.stderr)") }
        return outcome.stdout
    }
}

/// The fault test of the shared queue: 3 hosts in network namespaces on one
/// PostgreSQL server reached over TCP, 300 small jobs through different hosts'
/// sockets and spools, 10 kill -9 of random hosts at random moments (each
/// restarted), one restart of the server, one host cut off for longer than a
/// lease and healed. Afterwards every job succeeded exactly once, with one
/// output directory, bit-identical to a single SQLite host's render; every
/// success came from the host of the job's last claim; the cut-off host's jobs
/// finished elsewhere.
///
/// Part of `make test` (about 90 s beside the rest); `make test-cluster` runs it alone.
@Suite(.serialized,
       .enabled(if: PostgresServer.available && TestNetwork.available,
                "needs PostgreSQL's server and root to make network namespaces (ip netns)"))
struct FaultTests {
    static let leaseSeconds = 3

    static func jobs() -> [[String: Any]] {
        let samplers = ["ddim", "dpmsolver++", "euler"]
        return (0..<300).map { index -> [String: Any] in
            var job = DaemonProcess.smallJob(steps: 12 + index % 7, count: 1 + index % 2, seed: 7000 + index, label: index % 10)
            job["sampler"] = samplers[index % 3]
            job["formats"] = ["npy"]
            return job
        }
    }

    @Test func threeHostsSurviveKillsARestartAndAPartition() throws {
        let network = try TestNetwork()
        defer { network.destroy() }
        let server = try PostgresServer(listen: "127.0.0.1,\(network.bridgeAddress)", allow: "\(network.prefix).0/24")
        defer { server.destroy() }
        let database = try server.newDatabase()
        let outputs = try ClusterTests.sharedOutputs()
        var hosts: [DaemonProcess] = []
        for index in 0..<3 {
            let namespace = try network.addHost()
            let host = try DaemonProcess(extra: """
                [queue]
                backend = "postgresql"
                url = "\(server.url(database, address: network.bridgeAddress))"
                host_name = "host-\(index)"
                lease_seconds = \(Self.leaseSeconds)
                poison_after_crashes = 0
                [checkpoint]
                every_steps = 3
                """, batchImages: 4, outputs: outputs, start: false)
            host.launcher = ["/usr/sbin/ip", "netns", "exec", namespace]
            try host.start()
            hosts.append(host)
        }
        defer { for host in hosts { host.kill9() } }

        // Submitted through every host, a fifth of them through its spool.
        let jobs = Self.jobs()
        var ids: [String] = []
        var spooled: [(host: Int, name: String)] = []
        for (index, job) in jobs.enumerated() {
            let host = hosts[index % 3]
            if index % 5 == 4 {
                let name = "job-\(index).json"
                try host.drop(name, String(decoding: try JSONSerialization.data(withJSONObject: job), as: UTF8.self))
                spooled.append((index % 3, name))
                ids.append("")
            } else {
                ids.append(try host.submit(job))
            }
        }
        var spoolIndex = 0
        for index in ids.indices where ids[index].isEmpty {
            ids[index] = try hosts[spooled[spoolIndex].host].spooledJob(spooled[spoolIndex].name)
            spoolIndex += 1
        }
        #expect(Set(ids).count == jobs.count)

        // The faults, at random moments while the hosts render.
        var generator = SystemRandomNumberGenerator()
        var kills = 0
        var restartedServer = false
        while kills < 10 {
            usleep(UInt32.random(in: 200_000...1_200_000, using: &generator))
            let victim = Int.random(in: 0..<3, using: &generator)
            hosts[victim].kill9()
            kills += 1
            usleep(300_000)
            try hosts[victim].start()
            if kills == 3 && !restartedServer {
                try server.restart()
                restartedServer = true
            }
            if kills == 6 {
                // Host 2 is cut off for more than two leases while it renders.
                try network.partition(2, true)
                usleep(UInt32(Self.leaseSeconds) * 2_500_000)
                try network.partition(2, false)
            }
        }

        // Every job ends succeeded.
        let deadline = Date().addingTimeInterval(300)
        var unfinished = ids
        while !unfinished.isEmpty && Date() < deadline {
            let jobs = try hosts[0].call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []
            let succeeded = Set(jobs.filter { $0["state"] as? String == "succeeded" }.compactMap { $0["id"] as? String })
            unfinished = unfinished.filter { !succeeded.contains($0) }
            if !unfinished.isEmpty { usleep(200_000) }
        }
        #expect(unfinished.isEmpty, "\(unfinished.count) jobs did not succeed: \(unfinished.prefix(10))")

        // Exactly once, from the host of the job's last claim, with increasing tokens.
        var resumed = 0
        var expiries = 0
        var partitionedJobs: [(String, [String])] = []
        for id in ids {
            let events = try hosts[1].call(["verb": "show", "id": id])["events"] as? [[String: Any]] ?? []
            let reasons = events.compactMap { $0["reason"] as? String }
            let successes = events.filter { $0["state"] as? String == "succeeded" && ($0["reason"] as? String)?.hasPrefix("rendered") == true }
            #expect(successes.count == 1, "job \(id): \(reasons)")
            let claims = reasons.filter { $0.hasPrefix("started on ") }
            let tokens = claims.compactMap { $0.split(separator: "lease ").last.flatMap { Int($0.dropLast()) } }
            #expect(tokens == tokens.sorted() && Set(tokens).count == tokens.count, "job \(id): tokens \(tokens)")
            let lastHost = claims.last.map { String($0.dropFirst("started on ".count).prefix { $0 != "," }) }
            #expect(successes.first.map { ($0["reason"] as? String)?.hasSuffix("on \(lastHost ?? "?")") == true } == true,
                    "job \(id): the success did not come from the last claim's host: \(reasons)")
            resumed += reasons.filter { $0.hasPrefix("resumed from the checkpoint") }.count
            if reasons.contains(where: { $0.hasPrefix("the lease of host-2 expired") }) {
                partitionedJobs.append((id, reasons.filter { $0.hasPrefix("rendered") }))
            }
            expiries += reasons.filter { $0.contains("expired") }.count
        }
        // The cut-off host's jobs: their lease expired while it could not renew, and another host finished them.
        #expect(!partitionedJobs.isEmpty, "no job of the cut-off host had its lease expire")
        for (id, reasons) in partitionedJobs {
            #expect(reasons.last?.hasSuffix("on host-2") == false, "job \(id) finished on the cut-off host: \(reasons)")
        }

        // One complete output directory per job (a stale host's partial one is
        // swept within a lease tick), bit-identical to one SQLite host's render.
        usleep(UInt32(Self.leaseSeconds) * 1_000_000)
        let directories = try ClusterTests.outputDirectories(outputs)
        #expect(directories == ids.sorted(), "output directories: \(directories.count), stray: \(Set(directories).subtracting(ids))")
        let single = try DaemonProcess(batchImages: 4)
        let reference = try jobs.map { try single.submit($0) }
        for (id, expected) in zip(ids, reference) {
            try single.wait(for: expected, state: "succeeded", seconds: 300)
            #expect(try ClusterTests.samples(outputs, id) == ClusterTests.samples("\(single.state)/outputs", expected), "job \(id)")
        }
        #expect(single.stop() == 0)

        let logs = hosts.map(\.log)
        let fenced = logs.map { $0.components(separatedBy: "was refused: lease").count - 1 }.reduce(0, +)
        let lost = logs.map { $0.components(separatedBy: "lost (not renewed in time").count - 1 }.reduce(0, +)
        // Since each host's last start: the longest any host's loop was held up.
        let stall = try hosts.map { try $0.call(["verb": "stats"])["loop_stall_max_ms"] as? Int ?? -1 }.max() ?? -1
        print("fault test: \(jobs.count) jobs, \(kills) kill -9, 1 server restart, 1 partition of \(Self.leaseSeconds * 5 / 2) s "
              + "(\(partitionedJobs.count) jobs running on the cut-off host); \(resumed) resumed from a checkpoint, "
              + "\(expiries) lease expiries, \(lost) leases found lost, \(fenced) fenced writes refused; "
              + "longest loop stall \(stall) ms")
    }
}
