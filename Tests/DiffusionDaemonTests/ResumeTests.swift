import Foundation
import Testing
@testable import DiffusionDaemon

/// What happens when things go wrong: kill -9, SIGTERM, a full disk; and
/// batching, which must not change a single bit.
@Suite(.serialized) struct ResumeTests {
    /// Every sampler twice, the multistep and two-evaluation ones among them.
    static let samplers = ["ddpm", "ddim", "dpmsolver++", "heun", "unipc", "pndm", "euler_ancestral", "lms", "euler", "lcm"]

    /// Twenty small jobs of different shapes, samplers and guidance.
    static func jobs() -> [[String: Any]] {
        (0..<20).map { index in
            var job: [String: Any] = ["model": "fashion-mnist", "sampler": samplers[index % samplers.count],
                                      "steps": 8 + index % 5, "count": 1 + index % 2, "seed": 500 + index,
                                      "class": index % 10, "formats": ["npy"]]
            if index % 4 == 1 { job["guidance"] = ["kind": "cfg", "scale": 2.5] }
            return job
        }
    }

    /// The twenty jobs rendered one at a time, uninterrupted (shared by the tests).
    nonisolated(unsafe) static var alone: [Data]?

    static func renderedAlone() throws -> [Data] {
        if let alone { return alone }
        alone = try reference(jobs(), batchImages: 1)
        return alone!
    }

    /// Renders `jobs` on a fresh daemon without interruption; returns each job's samples.npy.
    static func reference(_ jobs: [[String: Any]], batchImages: Int) throws -> [Data] {
        let daemon = try DaemonProcess(batchImages: batchImages)
        let ids = try jobs.map { try daemon.submit($0) }
        let samples = try ids.map { id -> Data in
            try daemon.wait(for: id, state: "succeeded", seconds: 120)
            return try Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(id)/samples.npy"))
        }
        #expect(daemon.stop() == 0)
        return samples
    }

    @Test func killedAtRandomMomentsEveryJobSucceedsOnceWithTheSameImages() throws {
        let jobs = Self.jobs()
        let expected = try Self.renderedAlone()
        // Killed on purpose, a job may be running at several kills in a row: no poison rule.
        let daemon = try DaemonProcess(extra: "[checkpoint]\nevery_steps = 2\n[queue]\npoison_after_crashes = 0", batchImages: 6)
        let ids = try jobs.map { try daemon.submit($0) }
        var generator = SystemRandomNumberGenerator()
        var kills = 0
        var resumed = 0
        for _ in 0..<4 {
            // Some time after a job got past its first checkpoint, at a random moment.
            try Self.waitForProgress(daemon, steps: 3)
            usleep(UInt32.random(in: 0...300_000, using: &generator))
            daemon.kill9()
            kills += 1
            try daemon.start()
        }
        for (id, samples) in zip(ids, expected) {
            let job = try daemon.wait(for: id, state: "succeeded", seconds: 180)
            #expect(job["attempts"] as? Int == 0)
            let events = try daemon.call(["verb": "show", "id": id])["events"] as? [[String: Any]] ?? []
            #expect(events.filter { $0["state"] as? String == "succeeded" }.count == 1)
            resumed += events.contains { ($0["reason"] as? String)?.hasPrefix("resumed from the checkpoint") == true } ? 1 : 0
            let rendered = try Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(id)/samples.npy"))
            #expect(rendered == samples, "job \(id) differs from its uninterrupted render")
        }
        #expect(daemon.stop() == 0)
        if !DaemonProcess.onPostgres {
            if !DaemonProcess.onPostgres { #expect(try JobStoreCheck.integrity(of: "\(daemon.state)/queue.sqlite") == "ok") }
            #expect(try FileManager.default.contentsOfDirectory(atPath: "\(daemon.state)/checkpoints").isEmpty)
        }
        print("kill -9 \(kills) times; \(resumed) of 20 jobs resumed from a checkpoint; all bit-identical")
    }

    @Test func batchedJobsRenderTheSameBitsAsAlone() throws {
        #expect(try Self.renderedAlone() == Self.reference(Self.jobs(), batchImages: 64))
    }

    @Test func sigtermExitsPromptlyAndTheJobResumes() throws {
        let daemon = try DaemonProcess(extra: "[checkpoint]\nevery_steps = 3")
        let job = DaemonProcess.smallJob(steps: 60, count: 2)
        let id = try daemon.submit(job)
        var step = 0
        while step < 10 {
            step = (try daemon.job(id)["progress"] as? [String: Any])?["step"] as? Int ?? 0
            usleep(10_000)
        }
        let start = Date()
        #expect(daemon.stop() == 0)
        #expect(Date().timeIntervalSince(start) < 5)
        if !DaemonProcess.onPostgres { #expect(FileManager.default.fileExists(atPath: "\(daemon.state)/checkpoints/\(id).json")) }
        try daemon.start()
        try daemon.wait(for: id, state: "succeeded", seconds: 120)
        let events = try daemon.call(["verb": "show", "id": id])["events"] as? [[String: Any]] ?? []
        let reasons = events.compactMap { $0["reason"] as? String }
        #expect(reasons.contains("the daemon stopped; queued again"))
        #expect(reasons.contains { $0.hasPrefix("resumed from the checkpoint at step ") })
        #expect(daemon.stop() == 0)
    }

    @Test(DaemonProcess.readsSQLiteFiles) func aCheckpointOfAnotherProgramVersionStartsTheJobAgain() throws {
        let daemon = try DaemonProcess(extra: "[checkpoint]\nevery_steps = 2")
        let id = try daemon.submit(DaemonProcess.smallJob(steps: 400))
        try daemon.wait(for: id, state: "running")
        let checkpointDeadline = Date().addingTimeInterval(60 * DaemonProcess.timeScale)
        while !FileManager.default.fileExists(atPath: "\(daemon.state)/checkpoints/\(id).json") && Date() < checkpointDeadline { usleep(10_000) }
        daemon.kill9()
        let path = "\(daemon.state)/checkpoints/\(id).json"
        var checkpoint = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        checkpoint["program"] = "0.0.1"
        try JSONSerialization.data(withJSONObject: checkpoint).write(to: URL(fileURLWithPath: path))
        try daemon.start()
        let deadline = Date().addingTimeInterval(20)
        while !daemon.log.contains("job \(id): its checkpoint is from another program version") && Date() < deadline { usleep(20_000) }
        #expect(daemon.log.contains("job \(id): its checkpoint is from another program version or job; starting from step 0"))
        #expect(try daemon.diffctl(["cancel", id]).status == 0)
        #expect(daemon.stop() == 0)
    }

    /// A checkpoint file of a job that ended (a daemon killed between the
    /// queue's record of the end and the file's removal) goes at the next
    /// start; a waiting job's stays.
    @Test(DaemonProcess.readsSQLiteFiles) func checkpointsOfEndedJobsGoAtStartUp() throws {
        let daemon = try DaemonProcess()
        let ended = try daemon.submit(DaemonProcess.smallJob(steps: 3))
        try daemon.wait(for: ended, state: "succeeded")
        let reply = try daemon.call(["verb": "submit", "job": DaemonProcess.smallJob(steps: 3, seed: 2), "hold": true])
        let held = try #require((reply["job"] as? [String: Any])?["id"] as? String)
        #expect(daemon.stop() == 0)
        for id in [ended, held] { try Data("{}".utf8).write(to: URL(fileURLWithPath: "\(daemon.state)/checkpoints/\(id).json")) }
        try daemon.start()
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(daemon.state)/checkpoints") == ["\(held).json"])
        #expect(daemon.stop() == 0)
    }

    /// Whether this machine lets the test mount a tmpfs (root, and mount allowed), tried once.
    static let canMountTmpfs: Bool = {
        guard getuid() == 0, let directory = try? DaemonProcess.temporaryDirectory() else { return false }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        guard (try? DaemonProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", directory]))?.status == 0 else { return false }
        _ = try? DaemonProcess.run("/bin/umount", [directory])
        return true
    }()

    @Test(.enabled(if: canMountTmpfs, "needs root and a tmpfs mount")) func aFullDiskFailsOnlyTheJobThatFilledIt() throws {
        let daemon = try DaemonProcess(outputs: "small", start: false)
        let small = "\(daemon.root)/small"
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        #expect(try DaemonProcess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=96k", "tmpfs", small]).status == 0)
        defer { _ = try? DaemonProcess.run("/bin/umount", [small]) }
        try daemon.start()
        var big = DaemonProcess.smallJob(steps: 2, count: 40)
        big["formats"] = ["png", "npy"]
        let bigID = try daemon.submit(big)
        let smallID = try daemon.submit(DaemonProcess.smallJob(steps: 2))
        let failed = try daemon.wait(for: bigID, state: "failed")
        #expect((failed["error"] as? String)?.hasPrefix("no space left on device") == true, "\(failed)")
        #expect(failed["attempts"] as? Int == 1)
        try daemon.wait(for: smallID, state: "succeeded")
        #expect(daemon.stop() == 0)
        if !DaemonProcess.onPostgres { #expect(try JobStoreCheck.integrity(of: "\(daemon.state)/queue.sqlite") == "ok") }
    }

    static func waitForProgress(_ daemon: DaemonProcess, steps: Int) throws {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let running = try daemon.call(["verb": "list", "state": "running"])["jobs"] as? [[String: Any]] ?? []
            if running.contains(where: { (($0["progress"] as? [String: Any])?["step"] as? Int ?? 0) >= steps }) { return }
            usleep(10_000)
        }
    }
}

