import Foundation
import Testing
@testable import DiffusionDaemon

/// A text-conditioned latent model (SD 1.x's form) through the real daemon:
/// `diffctl submit --prompt --negative-prompt`, a spool job with prompts, and
/// two jobs of different prompts sharing one U-Net batch, each image bit for
/// bit what it is alone.
@Suite(.serialized) struct TextDaemonTests {
    static let fixtures = "\(DaemonProcess.packageRoot)/Tests/LatentFixtures"

    func start(batchImages: Int = 1) throws -> DaemonProcess {
        let daemon = try DaemonProcess(batchImages: batchImages)
        try FileManager.default.createDirectory(atPath: "\(daemon.root)/models", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "\(Self.fixtures)/sd1-tiny", toPath: "\(daemon.root)/models/sd1-tiny")
        return daemon
    }

    func samples(_ daemon: DaemonProcess, _ id: String) throws -> Data {
        try Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(id)/samples.npy"))
    }

    @Test func promptsComeInByDiffctlAndTheSpool() throws {
        let daemon = try start()
        let submitted = try daemon.diffctl(["submit", "--json", "--model", "sd1-tiny", "--steps", "3", "--seed", "4",
                                            "--prompt", "a photo of an ankle boot", "--negative-prompt", "blurry",
                                            "--width", "24"])
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let id = try #require((submitted.json as? [String: Any])?["id"] as? String)
        try daemon.wait(for: id, state: "succeeded", seconds: 120)
        let resolved = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(id)/job.json"))) as? [String: Any]
        #expect(resolved?["prompt"] as? [String] == ["a photo of an ankle boot"])
        #expect(resolved?["negative_prompt"] as? [String] == ["blurry"])
        #expect(resolved?["width"] as? Int == 24 && resolved?["height"] as? Int == 16)

        try daemon.drop("boots.json", #"{"model": "sd1-tiny", "steps": 2, "count": 2, "seed": 5, "prompt": ["boots", "a bag"], "formats": ["npy", "latents"]}"#)
        let spoolID = try daemon.spooledJob("boots.json")
        try daemon.wait(for: spoolID, state: "succeeded", seconds: 120)
        #expect(FileManager.default.fileExists(atPath: "\(daemon.state)/outputs/\(spoolID)/latents.npy"))

        // image-to-image from a PNG diffctl reads and sends inline; PNDM (SD 1.x's scheduler) cannot start part-way
        let png = "\(Self.fixtures)/sd1-tiny/init.png"
        let edited = try daemon.diffctl(["submit", "--json", "--model", "sd1-tiny", "--steps", "5", "--seed", "3", "--prompt", "boots",
                                         "--image", png, "--strength", "0.6", "--sampler", "euler"])
        let editID = try #require((edited.json as? [String: Any])?["id"] as? String, "\(edited.stderr)")
        try daemon.wait(for: editID, state: "succeeded", seconds: 120)
        let editJob = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: "\(daemon.state)/outputs/\(editID)/job.json"))) as? [String: Any]
        #expect(editJob?["init_image"] as? String == "inline" && editJob?["strength"] as? Double == 0.6)
        let pndm = try daemon.diffctl(["submit", "--json", "--model", "sd1-tiny", "--steps", "5", "--prompt", "boots", "--image", png])
        let pndmID = try #require((pndm.json as? [String: Any])?["id"] as? String, "\(pndm.stderr)")
        let failed = try daemon.wait(for: pndmID, state: "failed", seconds: 120)
        #expect("\(failed)".contains("pndm cannot start part-way through its schedule"), "\(failed)")

        let refused = try daemon.call(["verb": "submit", "job": ["model": "sd1-tiny", "steps": 2]])
        #expect(refused["error"] as? String == "job: this model is text-conditioned: give \"prompt\"", "\(refused)")
        let models = try daemon.diffctl(["models"])
        #expect(models.stdout.contains("sd1-tiny") && models.stdout.contains("16x16") && models.stdout.contains("  text"), "\(models.stdout)")
        #expect(daemon.stop() == 0)
    }

    @Test func jobsOfDifferentPromptsShareABatchBitIdentically() throws {
        let daemon = try start(batchImages: 8)
        #expect(try daemon.diffctl(["pause"]).status == 0)
        let jobs: [[String: Any]] = [
            ["model": "sd1-tiny", "steps": 4, "count": 2, "seed": 11, "prompt": ["boots", "a trouser"], "negative_prompt": "blurry", "formats": ["npy"]],
            ["model": "sd1-tiny", "steps": 4, "seed": 12, "prompt": "a bag on a table", "sampler": "euler", "formats": ["npy"]],
        ]
        let together = try jobs.map { try daemon.submit($0) }
        #expect(try daemon.diffctl(["resume"]).status == 0)
        for id in together { try daemon.wait(for: id, state: "succeeded", seconds: 120) }
        // PNDM's 5 evaluations for 4 steps, euler's 4: all of the second job's shared a batch of 3 images
        let metrics = try daemon.diffctl(["metrics"]).stdout
        #expect(metrics.contains("diffusiond_batch_images_count 5") && metrics.contains("diffusiond_batch_images_sum 14.0"), "\(metrics)")
        for (job, id) in zip(jobs, together) {
            let alone = try daemon.submit(job)
            try daemon.wait(for: alone, state: "succeeded", seconds: 120)
            #expect(try samples(daemon, alone) == samples(daemon, id), "job \(id) differs from its render alone")
        }
        #expect(daemon.stop() == 0)
    }
}
