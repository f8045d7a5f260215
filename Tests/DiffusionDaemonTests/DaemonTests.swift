import DiffusionDaemon
import Foundation
import Testing

/// The daemon and diffctl as people use them: real processes, socket and spool.
@Suite(.serialized) struct DaemonTests {
    @Test func rendersJobsFromTheSocketAndTheSpool() throws {
        let daemon = try DaemonProcess()
        let submitted = try daemon.diffctl(["submit", "--json", "--model", "fashion-mnist", "--steps", "4", "--count", "3",
                                            "--class", "1", "--seed", "9", "--guidance", "cfg", "--scale", "3"])
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let job = try #require(submitted.json as? [String: Any])
        let id = try #require(job["id"] as? String)
        for key in ["state", "owner", "priority", "attempts", "progress", "output_dir", "outputs", "error", "created_at"] {
            #expect(job[key] != nil, "submit --json lacks \(key)")
        }
        #expect((job["owner"] as? [String: Any])?["uid"] as? Int == Int(getuid()))
        #expect((job["progress"] as? [String: Any])?["count"] as? Int == 3)

        let watched = try daemon.diffctl(["watch", id])
        #expect(watched.status == 0, "\(watched.stderr)")
        #expect(watched.stderr.contains("step 4/4"), "\(watched.stderr)")
        let done = try daemon.job(id)
        #expect(done["state"] as? String == "succeeded")
        let outputs = (done["outputs"] as? [String] ?? []).map { URL(fileURLWithPath: $0).lastPathComponent }
        #expect(outputs == ["grid.png", "image-0000.png", "image-0001.png", "image-0002.png", "job.json"])
        #expect((done["outputs"] as? [String])?.allSatisfy { $0.hasPrefix("\(daemon.state)/outputs/\(id)/") } == true)
        #expect((done["finished_at"] as? String)?.hasSuffix("Z") == true)
        let png = try Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(id)/image-0000.png"))
        #expect(png.range(of: Data("tEXtparameters\0Steps: 4, Sampler: DDIM, CFG scale: 3.0, Class: 1, Seed: ".utf8)) != nil)
        #expect(png.range(of: Data(", Size: 28x28, Model hash: ".utf8)) != nil && png.range(of: Data(", Model: fashion-mnist".utf8)) != nil)

        // The same job through the spool, written by hand the documented way.
        try daemon.drop("by-hand.json", #"{"model": "fashion-mnist", "steps": 4, "count": 3, "class": 1, "seed": 9, "sampler": "ddim", "guidance": {"kind": "cfg", "scale": 3}}"#)
        let list = try daemon.diffctl(["list", "--json"])
        let deadline = Date().addingTimeInterval(30)
        var spoolJob: [String: Any]?
        while spoolJob == nil && Date() < deadline {
            let jobs = try daemon.call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []
            spoolJob = jobs.first { $0["source"] as? String == "spool by-hand.json" }
            usleep(50_000)
        }
        let spoolID = try #require(spoolJob?["id"] as? String)
        try daemon.wait(for: spoolID, state: "succeeded")
        #expect(!FileManager.default.fileExists(atPath: "\(daemon.state)/spool/new/by-hand.json"))
        // Same job, same seed: the same images, whichever way it came.
        for name in ["image-0000.png", "image-0002.png"] {
            let a = try Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(id)/\(name)"))
            let b = try Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(spoolID)/\(name)"))
            #expect(a == b)
        }
        #expect(list.status == 0 && (list.json as? [Any]) != nil)

        let show = try daemon.diffctl(["show", id, "--json"])
        let events = (show.json as? [String: Any])?["events"] as? [[String: Any]] ?? []
        #expect(events.map { $0["state"] as? String ?? "" } == ["queued", "running", "succeeded"])
        let stats = try daemon.diffctl(["stats", "--json"])
        #expect(((stats.json as? [String: Any])?["jobs"] as? [String: Any])?["succeeded"] as? Int == 2)
        let models = try daemon.diffctl(["models", "--json"])
        #expect((models.json as? [[String: Any]])?.first?["name"] as? String == "fashion-mnist")
        let plugins = try daemon.diffctl(["plugins", "--json"])
        let samplers = ((plugins.json as? [String: Any])?["samplers"] as? [[String: Any]])?.compactMap { $0["name"] as? String }
        #expect(samplers == ["ddim", "ddpm", "dpmsolver++", "euler", "euler_ancestral", "heun", "langevin", "lcm", "lms", "pndm",
                             "score_sde_ve", "unipc"])
        #expect(try daemon.diffctl(["ping"]).status == 0)

        #expect(daemon.stop() == 0)
        #expect(daemon.log.contains("stopped; every loop handle closed: yes"), "\(daemon.log)")
        #expect(!FileManager.default.fileExists(atPath: daemon.socket))
    }

    @Test func jobVerbsChangeStatesAndExitCodesSayWhatHappened() throws {
        let daemon = try DaemonProcess()
        let blocker = try daemon.submit(DaemonProcess.smallJob(steps: 1000))
        try daemon.wait(for: blocker, state: "running")
        let second = try daemon.submit(DaemonProcess.smallJob())

        #expect(try daemon.diffctl(["hold", second]).status == 0)
        #expect(try daemon.job(second)["state"] as? String == "held")
        let refused = try daemon.diffctl(["hold", second])
        #expect(refused.status == 1)
        #expect(refused.stderr == "diffctl: job \(second) is held; only a job that is queued can be held\n")
        #expect(try daemon.diffctl(["release", second]).status == 0)
        #expect(try daemon.diffctl(["priority", second, "5"]).status == 0)
        #expect(try daemon.job(second)["priority"] as? Int == 5)
        #expect(try daemon.diffctl(["cancel", second]).status == 0)
        #expect(try daemon.job(second)["state"] as? String == "canceled")
        #expect(try daemon.diffctl(["watch", second]).status == 4)
        #expect(try daemon.diffctl(["retry", second]).status == 0)
        #expect(try daemon.job(second)["state"] as? String == "queued")

        // Cancelling the running job takes effect at its next step, and the reply waits for it.
        let canceled = try daemon.diffctl(["cancel", blocker, "--json"])
        #expect(canceled.status == 0, "\(canceled.stderr)")
        #expect((canceled.json as? [String: Any])?["state"] as? String == "canceled")
        try daemon.wait(for: second, state: "succeeded")

        // A job the model cannot render is refused at submit, with the reason, and queues nothing.
        let before = try daemon.call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []
        let bad = try daemon.diffctl(["submit", "--model", "fashion-mnist", "--steps", "4", "--class", "20"])
        #expect(bad.status == 1)
        #expect(bad.stderr == "diffctl: job: class 20 is out of range: this model has labels 0...10\n")
        #expect((try daemon.call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []).count == before.count)

        let unknown = try daemon.diffctl(["show", "999"])
        #expect(unknown.status == 1 && unknown.stderr == "diffctl: no job 999\n")
        let refusedSubmit = try daemon.diffctl(["submit", "--model", "../etc", "--steps", "2"])
        #expect(refusedSubmit.status == 1)
        #expect(refusedSubmit.stderr.contains("model must be the name of an installed model"))
        let overLimit = try daemon.diffctl(["submit", "--model", "fashion-mnist", "--steps", "5000"])
        #expect(overLimit.stderr == "diffctl: job: steps 5000 is over the limit of 1000\n")
        #expect(daemon.stop() == 0)
        let noDaemon = try daemon.diffctl(["ping"])
        #expect(noDaemon.status == 2)
        #expect(noDaemon.stderr.hasPrefix("diffctl: no daemon at \(daemon.socket)"))
    }

    @Test func aCrashNeverLosesAJobNorUsesAnAttempt() throws {
        let daemon = try DaemonProcess(extra: "[checkpoint]\nevery_steps = 0")
        let id = try daemon.submit(DaemonProcess.smallJob(steps: 100))
        try daemon.wait(for: id, state: "running")
        daemon.kill9()
        try daemon.start()
        let done = try daemon.wait(for: id, state: "succeeded", seconds: 120)
        #expect(done["attempts"] as? Int == 0)
        let events = try daemon.call(["verb": "show", "id": id])["events"] as? [[String: Any]] ?? []
        #expect(events.contains { ($0["reason"] as? String)?.contains("the daemon stopped while it ran") == true })
        #expect(daemon.stop() == 0)
    }

    @Test func previewsAreAnnouncedToWatchers() throws {
        let daemon = try DaemonProcess()
        var job = DaemonProcess.smallJob(steps: 12, count: 4)
        job["preview_every"] = 4
        let id = try daemon.submit(job)
        let client = try daemon.client()
        try client.send(["verb": "watch", "id": id])
        var previews: Set<String> = []
        var sawFile = false
        while true {
            let event = try client.receive()
            let progress = (event["job"] as? [String: Any])?["progress"] as? [String: Any] ?? [:]
            if let preview = progress["preview"] as? String {
                previews.insert(preview)
                sawFile = sawFile || FileManager.default.fileExists(atPath: preview)
            }
            if event["event"] as? String == "end" { break }
        }
        #expect(previews == ["\(daemon.previews)/\(id).png"])
        #expect(sawFile)
        #expect(!FileManager.default.fileExists(atPath: "\(daemon.previews)/\(id).png"), "a finished job's preview stays")
        #expect(daemon.stop() == 0)
    }

    @Test func sighupRereadsTheConfiguration() throws {
        let daemon = try DaemonProcess()
        #expect(try daemon.diffctl(["submit", "--model", "fashion-mnist", "--steps", "20"]).status == 0)
        let config = try String(contentsOfFile: daemon.configPath, encoding: .utf8)
        try (config + "\n[limits]\nmax_steps = 10\n").write(toFile: daemon.configPath, atomically: true, encoding: .utf8)
        kill(daemon.process!.processIdentifier, SIGHUP)
        let deadline = Date().addingTimeInterval(10)
        while !daemon.log.contains("reloaded: plugins") && Date() < deadline { usleep(20_000) }
        let refused = try daemon.diffctl(["submit", "--model", "fashion-mnist", "--steps", "20"])
        #expect(refused.stderr == "diffctl: job: steps 20 is over the limit of 10\n")
        #expect(daemon.stop() == 0, "\(daemon.log)")
    }

    @Test func oneDaemonPerStateDirectory() throws {
        let daemon = try DaemonProcess()
        let second = try DaemonProcess.run("\(DaemonProcess.buildDirectory)/diffusiond", ["--config", daemon.configPath])
        let message = second.stderr
        #expect(second.status == 1)
        #expect(message.contains("another diffusiond (pid \(daemon.process!.processIdentifier)) is running on \(daemon.state)"), "\(message)")
        #expect(try daemon.diffctl(["ping"]).status == 0)
        #expect(daemon.stop() == 0)
    }

    @Test func aBadConfigurationNamesItsKey() throws {
        let root = try DaemonProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        for (text, message) in [
            ("[paths]\ncolour = \"red\"", "diffusiond.toml:2: unknown key paths.colour"),
            ("[limits]\nmax_steps = \"many\"", "diffusiond.toml:2: limits.max_steps must be a whole number in 1...100000"),
            ("[log]\nlevel = \"loud\"", "diffusiond.toml:2: log.level must be one of trace, debug, info, notice, warning, error, critical"),
            ("[paths\n", "diffusiond.toml: line 1: expected \"]\""),
            ("[queue]\nbackend = \"mysql\"", "diffusiond.toml:2: queue.backend must be one of sqlite, postgresql"),
            ("[queue]\nbackend = \"postgresql\"", "diffusiond.toml: [queue] backend = \"postgresql\" needs [queue] url"),
            ("[queue]\nlease_seconds = 0.5", "diffusiond.toml:2: queue.lease_seconds must be at least 1 second"),
        ] {
            try text.write(toFile: "\(root)/diffusiond.toml", atomically: true, encoding: .utf8)
            let outcome = try DaemonProcess.run("\(DaemonProcess.buildDirectory)/diffusiond", ["--config", "\(root)/diffusiond.toml"])
            let output = outcome.stderr
            #expect(outcome.status == 1)
            #expect(output.hasPrefix("diffusiond: \(root)/\(message)") && output.split(separator: "\n").count == 1, "\(output)")
        }
    }

    @Test func theShippedConfigurationIsTheDefaults() throws {
        let shipped = try DaemonConfig(path: "\(DaemonProcess.packageRoot)/etc/diffusiond.toml")
        let defaults = DaemonConfig()
        #expect(shipped.stateDirectory == defaults.stateDirectory && shipped.socketPath == defaults.socketPath)
        #expect(shipped.limits.maxSteps == defaults.limits.maxSteps && shipped.limits.maxPixels == defaults.limits.maxPixels)
        #expect(shipped.maxRequestBytes == defaults.maxRequestBytes && shipped.keepJobs == defaults.keepJobs)
        #expect(shipped.checkpointEverySteps == defaults.checkpointEverySteps && shipped.jobSeconds == defaults.jobSeconds)
        #expect(shipped.batchImages == defaults.batchImages && shipped.maxAttempts == defaults.maxAttempts)
        #expect(shipped.socketBufferBytes == defaults.socketBufferBytes && shipped.connectionsPerUser == defaults.connectionsPerUser)
        #expect(shipped.idleSeconds == defaults.idleSeconds && shipped.poisonAfterCrashes == defaults.poisonAfterCrashes)
        #expect(shipped.jobsPerUser == defaults.jobsPerUser && shipped.imagesPerUser == defaults.imagesPerUser)
        #expect(shipped.spoolTmpMaxAgeHours == defaults.spoolTmpMaxAgeHours && shipped.metricsIntervalSeconds == defaults.metricsIntervalSeconds)
        #expect(shipped.metricsTextfile == nil && shipped.adminGroup == nil)
        #expect(shipped.queueBackend == defaults.queueBackend && shipped.leaseSeconds == defaults.leaseSeconds && shipped.queueURL == nil)
    }
}
