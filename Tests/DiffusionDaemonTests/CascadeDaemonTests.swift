import Foundation
import Testing
@testable import DiffusionDaemon

/// The shipped two-stage cascade (fashion-mnist-14 -> fashion-mnist-sr) through
/// the real daemon: `diffctl submit --stage`, a spool job with `stages`, an SR
/// job from a PNG (`--upscale`), progress by stage, and a job killed inside
/// stage 2 that resumes there with stage 1's images and ends with the bits of
/// a run batched with another job and never interrupted.
@Suite(.serialized) struct CascadeDaemonTests {
    static func cascade(seed: Int) -> [String: Any] {
        ["model": "fashion-mnist-14", "steps": 6, "count": 2, "seed": seed, "class": [3, 8], "formats": ["npy", "stages"],
         "stages": [["model": "fashion-mnist-sr", "steps": 40, "noise_level": 100]]]
    }

    func file(_ daemon: DaemonProcess, _ id: String, _ name: String) throws -> Data {
        try Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(id)/\(name)"))
    }

    @Test func aCascadeKilledInStageTwoResumesThereBitIdentically() throws {
        let daemon = try DaemonProcess(extra: "[checkpoint]\nevery_steps = 2", batchImages: 64)
        // the reference, batched in both stages with another cascade job
        let reference = try daemon.submit(Self.cascade(seed: 5))
        let other = try daemon.submit(Self.cascade(seed: 6))
        try daemon.wait(for: reference, state: "succeeded", seconds: 120)
        try daemon.wait(for: other, state: "succeeded", seconds: 120)

        let id = try daemon.submit(Self.cascade(seed: 5))
        let deadline = Date().addingTimeInterval(60 * DaemonProcess.timeScale)
        var progress: [String: Any] = [:]
        while Date() < deadline {
            progress = try daemon.job(id)["progress"] as? [String: Any] ?? [:]
            if progress["stage"] as? Int == 2, progress["step"] as? Int ?? 0 >= 4 { break }
            usleep(5_000)
        }
        #expect(progress["stage"] as? Int == 2 && progress["stages"] as? Int == 2 && progress["total"] as? Int == 40, "\(progress)")
        daemon.kill9()
        try daemon.start()
        try daemon.wait(for: id, state: "succeeded", seconds: 120)
        let reasons = (try daemon.call(["verb": "show", "id": id])["events"] as? [[String: Any]] ?? []).compactMap { $0["reason"] as? String }
        let resumed = reasons.first { $0.hasPrefix("resumed from the checkpoint at step ") }
        // steps count over both stages: stage 2's checkpoints are past stage 1's 6
        let step = resumed.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        #expect(step > 6, "\(reasons)")
        for name in ["samples.npy", "stage-1/samples.npy"] {
            #expect(try file(daemon, id, name) == file(daemon, reference, name), "\(name)")
        }
        #expect(try file(daemon, id, "samples.npy") != file(daemon, other, "samples.npy"))
        #expect(daemon.stop() == 0)
    }

    @Test func cascadesComeInByDiffctlAndTheSpool() throws {
        let daemon = try DaemonProcess()
        let submitted = try daemon.diffctl(["submit", "--json", "--model", "fashion-mnist-14", "--class", "5", "--steps", "3",
                                            "--seed", "2", "--stage", "fashion-mnist-sr"])
        let id = try #require((submitted.json as? [String: Any])?["id"] as? String, "\(submitted.stderr)")
        try daemon.wait(for: id, state: "succeeded", seconds: 120)
        let resolved = try JSONSerialization.jsonObject(with: file(daemon, id, "job.json")) as? [String: Any]
        let stage = (resolved?["stages"] as? [[String: Any]])?.first
        #expect(stage?["model"] as? String == "fashion-mnist-sr" && stage?["noise_level"] is Int, "\(resolved ?? [:])")
        let png = try file(daemon, id, "image-0000.png")
        #expect(png.count > 100)

        // the SR stage alone, on the 28x28 PNG the cascade made (upscaled 28 -> 28: its own size)
        let path = "\(daemon.root)/low.png"
        try png.write(to: URL(fileURLWithPath: path))
        let upscaled = try daemon.diffctl(["submit", "--json", "--model", "fashion-mnist-sr", "--upscale", path, "--steps", "3",
                                           "--noise-level", "50"])
        let upscaleID = try #require((upscaled.json as? [String: Any])?["id"] as? String, "\(upscaled.stderr)")
        try daemon.wait(for: upscaleID, state: "succeeded", seconds: 120)

        try daemon.drop("cascade.json", #"{"model": "fashion-mnist-14", "steps": 2, "class": 1, "seed": 3, "stages": [{"model": "fashion-mnist-sr", "steps": 2}]}"#)
        let spooled = try daemon.spooledJob("cascade.json")
        try daemon.wait(for: spooled, state: "succeeded", seconds: 120)

        let refused = try daemon.call(["verb": "submit", "job": ["model": "fashion-mnist-14", "stages": [["model": "fashion-mnist"]]]])
        #expect(refused["error"] as? String == "job: stage 2 (fashion-mnist): a later stage of a cascade must be a super-resolution model; this one takes no image", "\(refused)")
        let path2 = try daemon.call(["verb": "submit", "job": ["model": "fashion-mnist-sr", "image": "/etc/passwd"]])
        #expect(path2["error"] as? String == "job: image must be inline ({\"png_base64\": ...}); the daemon opens no file a job names")
        let models = try daemon.diffctl(["models"])
        #expect(models.stdout.contains("fashion-mnist-sr") && models.stdout.contains("super-resolution"), "\(models.stdout)")
        #expect(daemon.stop() == 0)
    }
}
