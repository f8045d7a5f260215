import DiffusionKernels
import DiffusionTestSupport
import Foundation
import Testing
@testable import DiffusionDaemon

/// Several real `diffusiond` hosts on one PostgreSQL queue (the test run's own
/// server), each with its own state directory, spool and socket, sharing the
/// outputs directory: claims, leases, fencing, wake-ups, cancels across hosts.
@Suite(.serialized, .enabled(if: PostgresServer.available, "needs PostgreSQL's server (Debian's postgresql; make test installs it)"))
struct ClusterTests {
    /// `count` hosts on a fresh database, sharing `outputs`.
    static func hosts(_ count: Int, leaseSeconds: Int = 30, checkpointEvery: Int = 2, outputs: String,
                      url: String? = nil) throws -> [DaemonProcess] {
        let url = try url ?? PostgresServer.shared.get().createDatabase()
        return try (0..<count).map { index in
            try DaemonProcess(extra: """
                [queue]
                backend = "postgresql"
                url = "\(url)"
                host_name = "host-\(index)"
                lease_seconds = \(leaseSeconds)
                poison_after_crashes = 0
                [checkpoint]
                every_steps = \(checkpointEvery)
                """, outputs: outputs)
        }
    }

    static func sharedOutputs() throws -> String {
        let path = "\(try DaemonProcess.temporaryDirectory())/outputs"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// What the shared outputs directory holds but the previews beside them: job directories, and partial ones.
    static func outputDirectories(_ outputs: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: outputs).filter { $0 != ".previews" }.sorted()
    }

    static func samples(_ outputs: String, _ id: String) throws -> Data {
        try Data(contentsOf: URL(fileURLWithPath: "\(outputs)/\(id)/samples.npy"))
    }

    /// The same jobs on one SQLite host, uninterrupted: the bits every cluster run must give.
    static func singleHost(_ jobs: [[String: Any]]) throws -> [Data] {
        let daemon = try DaemonProcess()
        let ids = try jobs.map { try daemon.submit($0) }
        defer { daemon.stop() }
        return try ids.map { id in
            try daemon.wait(for: id, state: "succeeded", seconds: 120)
            return try samples("\(daemon.state)/outputs", id)
        }
    }

    static func jobs(_ count: Int, steps: Int) -> [[String: Any]] {
        (0..<count).map { index in
            var job = DaemonProcess.smallJob(steps: steps, count: 2, seed: 900 + index, label: index % 10)
            job["formats"] = ["npy"]
            return job
        }
    }

    /// Jobs submitted through both hosts' sockets and spools each succeed once,
    /// on one host or the other, with one output directory, bit-identical to a
    /// single SQLite host's renders; and both hosts see every job.
    @Test func twoHostsShareOneQueue() throws {
        let outputs = try Self.sharedOutputs()
        let hosts = try Self.hosts(2, outputs: outputs)
        let jobs = Self.jobs(8, steps: 12)
        var ids: [String] = []
        for (index, job) in jobs.enumerated() {
            let host = hosts[index % 2]
            if index % 4 == 3 {
                try host.drop("job-\(index).json", String(decoding: try JSONSerialization.data(withJSONObject: job), as: UTF8.self))
                ids.append(try host.spooledJob("job-\(index).json"))
            } else {
                ids.append(try host.submit(job))
            }
        }
        #expect(Set(ids).count == jobs.count)
        var ranOn: [String: Int] = [:]
        for id in ids {
            let record = try hosts[1].wait(for: id, state: "succeeded", seconds: 120)
            ranOn[record["host"] as? String ?? "?", default: 0] += 1
            #expect(try hosts[0].job(id)["state"] as? String == "succeeded")
        }
        let expected = try Self.singleHost(jobs)
        for (id, samples) in zip(ids, expected) { #expect(try Self.samples(outputs, id) == samples, "job \(id)") }
        #expect(try Self.outputDirectories(outputs) == ids.sorted(), "exactly one complete output directory per job, no partial one")
        print("two hosts: \(ranOn.sorted { $0.key < $1.key }.map { "\($0.key) ran \($0.value)" }.joined(separator: ", "))")
        for host in hosts { #expect(host.stop() == 0) }
    }

    /// A host killed inside a render: once its lease expires another host
    /// takes the job, resumes it from the checkpoint in the database, and
    /// renders the same bits.
    @Test func aKilledHostsJobResumesOnAnotherHost() throws {
        let (hosts, outputs, job, id) = try Self.longJobOnHostZero(pastStep: 6)
        hosts[0].kill9()
        _ = try hosts[1].diffctl(["resume"])
        let record = try hosts[1].wait(for: id, state: "succeeded", seconds: 120)
        #expect(record["host"] as? String == "host-1")
        let events = try hosts[1].call(["verb": "show", "id": id])["events"] as? [[String: Any]] ?? []
        let reasons = events.compactMap { $0["reason"] as? String }
        #expect(reasons.contains { $0.contains("the lease of host-0 expired") }, "\(reasons)")
        #expect(reasons.contains { $0.hasPrefix("resumed from the checkpoint at step") }, "\(reasons)")
        #expect(try Self.samples(outputs, id) == Self.singleHost([job])[0])
        #expect(try Self.outputDirectories(outputs) == [id])
        #expect(hosts[1].stop() == 0)
    }

    /// A host frozen past its lease (SIGSTOP, as a long pause or a partition
    /// looks): another host takes the job; thawed, the stale host learns at its
    /// next renewal that the lease is gone and writes nothing more about it.
    @Test func aFrozenHostIsFencedOff() throws {
        let (hosts, outputs, job, id) = try Self.longJobOnHostZero(pastStep: 4)
        let frozen = hosts[0].process!.processIdentifier
        kill(frozen, SIGSTOP)
        _ = try hosts[1].diffctl(["resume"])
        // Host 1 claims it once the lease has expired.
        let deadline = Date().addingTimeInterval(30)
        while try hosts[1].job(id)["host"] as? String != "host-1" && Date() < deadline { usleep(50_000) }
        kill(frozen, SIGCONT)
        try hosts[1].wait(for: id, state: "succeeded", seconds: 120)
        let fenceDeadline = Date().addingTimeInterval(10)
        while !hosts[0].log.contains("job \(id): lease") && Date() < fenceDeadline { usleep(50_000) }
        #expect(hosts[0].log.contains("job \(id): lease") || hosts[0].log.contains("job \(id): a checkpoint was refused"),
                "\(hosts[0].log.suffix(2000))")
        #expect(try Self.samples(outputs, id) == Self.singleHost([job])[0])
        #expect(try Self.outputDirectories(outputs) == [id], "one output directory, none from the stale host")
        let stats = try hosts[0].call(["verb": "stats"])
        print("frozen host: \(stats["leases_lost"] ?? "?") lease(s) lost, \(stats["fenced_writes"] ?? "?") fenced write(s)")
        for host in hosts { #expect(host.stop() == 0) }
    }

    /// A job submitted on one host wakes an idle one through NOTIFY, not at its
    /// next look (a lease tick, 2 s here, away); the submitting host shows the
    /// job's previews, which the other host writes; and a cancel sent to one
    /// host stops the job the other runs.
    @Test func submitsWakeOtherHostsAndCancelsReachThem() throws {
        let outputs = try Self.sharedOutputs()
        let hosts = try Self.hosts(2, leaseSeconds: 6, outputs: outputs)
        _ = try hosts[0].diffctl(["pause"])
        let started = Date()
        var long = Self.jobs(1, steps: 1000)[0]
        long["count"] = 8
        long["preview_every"] = 2
        let id = try hosts[0].submit(long)
        while try hosts[1].job(id)["state"] as? String == "queued" && Date().timeIntervalSince(started) < 5 { usleep(5_000) }
        let wake = Date().timeIntervalSince(started)
        #expect(try hosts[1].job(id)["state"] as? String == "running", "host 1 did not start the job within 5 s")
        print(String(format: "an idle host started a job submitted on another host %.0f ms after the submit", wake * 1000))
        let previewDeadline = Date().addingTimeInterval(20)
        var preview: String?
        while preview == nil && Date() < previewDeadline {
            preview = (try hosts[0].job(id)["progress"] as? [String: Any])?["preview"] as? String
            usleep(20_000)
        }
        #expect(preview.map { $0.hasPrefix("\(outputs)/.previews/") && FileManager.default.fileExists(atPath: $0) } == true,
                "host 0 shows no preview of the job host 1 runs: \(preview ?? "none")")
        let reply = try hosts[0].call(["verb": "cancel", "id": id])
        #expect(reply["ok"] as? Bool == true, "\(reply)")
        try hosts[1].wait(for: id, state: "canceled", seconds: 30)
        for host in hosts { #expect(host.stop() == 0) }
    }

    /// A job belongs to the user who submitted it, as the submitting host saw
    /// them, on every host: its owner may act on it from another host, another
    /// user may not, root may.
    @Test(AdminTests.asOtherUser) func ownershipHoldsOnEveryHost() throws {
        let hosts = try Self.hosts(2, outputs: try Self.sharedOutputs())
        for host in hosts { _ = try host.diffctl(["pause"]) }
        let submitted = try hosts[0].diffctl(["submit", "--quiet", "--model", "fashion-mnist", "--steps", "3"], asUID: AdminTests.nobody)
        let id = submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let owner = try hosts[1].job(id)["owner"] as? [String: Any]
        #expect(owner?["uid"] as? Int == AdminTests.nobody && owner?["user"] as? String == "nobody", "\(owner ?? [:])")
        let stranger = try hosts[1].diffctl(["cancel", id], asUID: 4242)
        #expect(stranger.status == 1 && stranger.stderr == "diffctl: job \(id) belongs to nobody; only its owner, root or [access] admin_group may change it\n",
                "\(stranger)")
        #expect(try hosts[1].diffctl(["hold", id], asUID: AdminTests.nobody).status == 0)
        #expect(try hosts[0].job(id)["state"] as? String == "held")
        #expect(try hosts[1].diffctl(["cancel", id]).status == 0)
        #expect(try hosts[0].job(id)["state"] as? String == "canceled")
        for host in hosts { #expect(host.stop() == 0) }
    }

    /// A server that stops answering (every process of it stopped, its
    /// connections open) holds up the loop for one statement's answer wait at
    /// most: the daemon gives the connection up, dials again on the loop, and
    /// answers its socket meanwhile (verbs that need the queue in one line).
    /// Thawed, it reconnects by itself and renders again.
    @Test func aServerThatStopsAnsweringHoldsUpTheLoopOnceAtMost() throws {
        let server = try PostgresServer()
        defer { server.destroy() }
        let host = try Self.hosts(1, leaseSeconds: 3, outputs: try Self.sharedOutputs(), url: try server.createDatabase())[0]
        try host.wait(for: try host.submit(DaemonProcess.smallJob(steps: 3)), state: "succeeded")
        try server.signalEveryProcess(SIGSTOP)
        // A verb of the loop's own, and one that needs the queue, by turns.
        var (calls, slowCalls) = (0, 0)
        var unreachable = ""
        let frozen = Date()
        while Date().timeIntervalSince(frozen) < 12 {
            let sent = Date()
            let reply = try host.call(["verb": calls % 2 == 0 ? "ping" : "list"])
            if Date().timeIntervalSince(sent) > 2 { slowCalls += 1 }
            if let error = reply["error"] as? String { unreachable = error }
            calls += 1
            usleep(100_000)
        }
        try server.signalEveryProcess(SIGCONT)
        #expect(slowCalls <= 1, "\(slowCalls) of \(calls) calls waited over 2 s while the server was stopped")
        #expect(unreachable.contains("is unreachable") && !unreachable.contains("\n"), "\(unreachable)")
        // Dialled again at the end of its backoff (4 s at most by now).
        let thawed = Date()
        while try host.call(["verb": "list"])["error"] != nil && Date().timeIntervalSince(thawed) < 20 { usleep(50_000) }
        let reconnected = Date().timeIntervalSince(thawed)
        let id = try host.submit(DaemonProcess.smallJob(steps: 3, seed: 5))
        try host.wait(for: id, state: "succeeded", seconds: 30)
        // The outage in the log: its start and its end, not a line per failed call.
        let log = host.log
        #expect(log.components(separatedBy: "warning: the queue database is unreachable").count == 2, "\(log.suffix(3000))")
        #expect(log.contains("the queue database answers again") && !log.contains("abandoned jobs not requeued"), "\(log.suffix(3000))")
        let stats = try host.call(["verb": "stats"])
        print(String(format: "a stopped server: %d of %d calls over 2 s in 12 s, the loop's longest stall %@ ms; reconnected %.1f s after the thaw",
                     slowCalls, calls, "\(stats["loop_stall_max_ms"] ?? "?")", reconnected))
        #expect(host.stop() == 0)
    }

    /// `diffusiond migrate-queue`: a stopped SQLite host's queue moves into
    /// PostgreSQL with its ids, states and events, and the host goes on from it.
    @Test func aSingleHostsQueueMovesIntoPostgres() throws {
        let daemon = try DaemonProcess(extra: "[queue]\nbackend = \"sqlite\"")
        let done = try daemon.submit(DaemonProcess.smallJob(steps: 3))
        try daemon.wait(for: done, state: "succeeded")
        _ = try daemon.diffctl(["pause"])
        let waiting = try (0..<2).map { try daemon.submit(DaemonProcess.smallJob(steps: 3, seed: 40 + $0)) }
        #expect(daemon.stop() == 0)
        let url = try PostgresServer.shared.get().createDatabase()
        let diffusiond = "\(DaemonProcess.buildDirectory)/diffusiond"
        let migrated = try DaemonProcess.run(diffusiond, ["migrate-queue", "--config", daemon.configPath, "--to", url])
        #expect(migrated.status == 0 && migrated.stdout.hasPrefix("copied 3 job(s)"), "\(migrated.stdout)\(migrated.stderr)")
        // A second copy into the same database is refused, in one line.
        let again = try DaemonProcess.run(diffusiond, ["migrate-queue", "--config", daemon.configPath, "--to", url])
        #expect(again.status == 1 && again.stderr.contains("already holds 3 job(s); migrate into an empty database"), "\(again.stderr)")

        let config = try String(contentsOfFile: daemon.configPath, encoding: .utf8)
            .replacingOccurrences(of: "backend = \"sqlite\"", with: "backend = \"postgresql\"\nurl = \"\(url)\"")
        try config.write(toFile: daemon.configPath, atomically: true, encoding: .utf8)
        try daemon.start()
        #expect(try daemon.job(done)["state"] as? String == "succeeded")
        let events = try daemon.call(["verb": "show", "id": done])["events"] as? [[String: Any]] ?? []
        #expect(events.count >= 3, "\(events)")
        _ = try daemon.diffctl(["resume"])
        for id in waiting { try daemon.wait(for: id, state: "succeeded") }
        let fresh = try daemon.submit(DaemonProcess.smallJob(steps: 3))
        #expect(Int(fresh)! > Int(waiting.last!)!)
        #expect(daemon.stop() == 0)
    }

    /// Two hosts with 2 s leases and a long job host 0 has rendered past
    /// `step` of (host 1 was paused until then, and is left paused).
    static func longJobOnHostZero(pastStep step: Int) throws -> ([DaemonProcess], String, [String: Any], String) {
        let outputs = try sharedOutputs()
        let hosts = try hosts(2, leaseSeconds: 2, outputs: outputs)
        let job = jobs(1, steps: 400)[0]
        _ = try hosts[1].diffctl(["pause"])
        let id = try hosts[0].submit(job)
        try waitForStep(hosts[0], id, atLeast: step)
        return (hosts, outputs, job, id)
    }

    static func waitForStep(_ host: DaemonProcess, _ id: String, atLeast step: Int) throws {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let progress = try host.job(id)["progress"] as? [String: Any]
            if (progress?["step"] as? Int ?? 0) >= step { return }
            usleep(10_000)
        }
        throw DiffusionError("job \(id) did not reach step \(step) within 60 s")
    }
}
