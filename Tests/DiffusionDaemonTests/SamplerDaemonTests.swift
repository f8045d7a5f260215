import Foundation
import Testing
@testable import DiffusionDaemon

/// The ABI 1.1 samplers and the score-model family through the real daemon:
/// a ScoreSdeVePipeline directory (a small NCSN++) submitted with diffctl and
/// dropped in the spool, its sampler chosen by its scheduler class; a model
/// whose scheduler class no plugin declares renders with ddim and says so.
@Suite(.serialized) struct SamplerDaemonTests {
    static let fixtures = "\(DaemonProcess.packageRoot)/Tests/DiffusionRenderTests/Fixtures"

    func copyModel(_ name: String, to daemon: DaemonProcess, as target: String? = nil) throws -> String {
        let destination = "\(daemon.root)/models/\(target ?? name)"
        try FileManager.default.createDirectory(atPath: "\(daemon.root)/models", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "\(Self.fixtures)/\(name)", toPath: destination)
        return destination
    }

    @Test func aScoreModelRendersThroughDiffctlAndTheSpool() throws {
        let daemon = try DaemonProcess()
        _ = try copyModel("unet-tiny-score", to: daemon)
        let submitted = try daemon.diffctl(["submit", "--json", "--model", "unet-tiny-score", "--steps", "3", "--count", "2",
                                            "--seed", "4"])
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let id = try #require((submitted.json as? [String: Any])?["id"] as? String)
        let done = try daemon.wait(for: id, state: "succeeded", seconds: 120)
        let resolved = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(id)/job.json"))) as? [String: Any]
        #expect(resolved?["sampler"] as? String == "score_sde_ve")
        #expect((done["outputs"] as? [String] ?? []).contains { $0.hasSuffix("/image-0001.png") })

        try daemon.drop("score.json", #"{"model": "unet-tiny-score", "steps": 3, "seed": 5, "sampler": "langevin", "sampler_options": {"steps_per_level": 2, "sigma_max": 50}, "formats": ["npy"]}"#)
        let spoolID = try daemon.spooledJob("score.json")
        try daemon.wait(for: spoolID, state: "succeeded", seconds: 120)
        #expect(FileManager.default.fileExists(atPath: "\(daemon.state)/outputs/\(spoolID)/samples.npy"))

        // a job the sampler cannot plan is refused at submit, with one line
        let refused = try daemon.call(["verb": "submit", "job": ["model": "unet-tiny-score", "steps": 1]])
        #expect(refused["error"] as? String == "job: sampler score_sde_ve: score_sde_ve needs at least 2 steps, not 1", "\(refused)")
        #expect(daemon.stop() == 0)
    }

    @Test func anUndeclaredSchedulerClassRendersWithDDIMAndANote() throws {
        let daemon = try DaemonProcess()
        let model = try copyModel("unet-tiny", to: daemon, as: "unet-kdpm")
        let configPath = "\(model)/scheduler/scheduler_config.json"
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath))) as! [String: Any]
        config["_class_name"] = "KDPM2DiscreteScheduler"
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))
        let id = try daemon.submit(["model": "unet-kdpm", "steps": 3, "class": 2])
        try daemon.wait(for: id, state: "succeeded", seconds: 120)
        let events = try daemon.call(["verb": "show", "id": id])["events"] as? [[String: Any]] ?? []
        #expect(events.contains { ($0["reason"] as? String)?.contains("names KDPM2DiscreteScheduler, which no sampler plugin implements; rendering with ddim") == true },
                "\(events)")
        #expect(daemon.stop() == 0)
    }
}
