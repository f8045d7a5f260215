import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation
import Testing

/// Super-resolution renders against diffusers (tools/reference/make_cascade_fixtures.py):
/// the pixel-space stage of a cascade (UNet2DModel with a "timestep" class
/// embedding for the augmentation level, bicubic upsampling) with ddim and euler,
/// LDMSuperResolutionPipeline with ddim and euler (which scales the image with
/// the latents), StableDiffusionUpscalePipeline with CFG and its noise level;
/// then cascades of them: planning, outputs, and resuming inside every stage.
@Suite struct CascadeRenderTests {
    static let root = "\(TestSupport.packageRoot)/Tests/CascadeFixtures"
    static let cases = [("pixel-sr", "render-ddim"), ("pixel-sr", "render-euler"), ("ldm-sr", "render-ddim"),
                        ("ldm-sr", "render-euler"), ("sd-upscale", "render-cfg")]

    struct Info: Decodable { let cases: [String: Case] }
    struct Case: Decodable { let diffusers_f32_max_abs_deviation: Double; let tolerance: Double }

    static func oneShot() -> OneShotRender {
        var render = OneShotRender()
        render.pluginDirectories = [TestSupport.buildDirectory]
        render.modelDirectories = [root, "\(TestSupport.packageRoot)/models"]
        return render
    }

    @Test(arguments: cases)
    func matchesDiffusers(_ model: String, _ name: String) throws {
        let info = try JSONDecoder().decode(Info.self, from: Data(contentsOf: URL(fileURLWithPath: "\(Self.root)/\(model)/cases.json"))).cases[name]!
        let output = try TestSupport.temporaryDirectory()
        try Self.oneShot().run(jobPath: "\(Self.root)/\(model)/\(name).json", outputDirectory: output)
        let samples = try NPYFile.read(path: "\(output)/samples.npy")
        let expected = try NPYFile.read(path: "\(Self.root)/\(model)/\(name)-expected.npy")
        let error = Double(samples.maxAbsDifference(expected))
        print("super-resolution \(model)/\(name): max |ours - diffusers float64| = \(error), tolerance \(info.tolerance) "
              + "(diffusers float32 deviation \(info.diffusers_f32_max_abs_deviation))")
        #expect(error <= info.tolerance)
    }

    /// Every mode, up and down, against F.interpolate in float64.
    @Test func resizeMatchesTorch() throws {
        struct Cases: Decodable {
            struct Case: Decodable { let mode: String; let size: [Int]; let expected: [Double] }
            let input_shape: [Int]
            let input: [Double]
            let cases: [Case]
        }
        let cases = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: URL(fileURLWithPath: "\(Self.root)/resize-cases.json")))
        let input = Tensor(shape: cases.input_shape, scalars: cases.input.map(Float.init))
        let runtime = KernelRuntime(threadCount: 1)
        for c in cases.cases {
            let output = runtime.resize(input, height: c.size[0], width: c.size[1], mode: Resampling(rawValue: c.mode)!)
            #expect(output.shape == [1, 2] + c.size)
            let error = zip((0..<output.count).map { Double(output.data[$0]) }, c.expected).map { abs($0 - $1) }.max()!
            #expect(error < 1e-6, "\(c.mode) to \(c.size): \(error)")
        }
    }

    /// Two stages from the fixtures: LDM super-resolution of low.png (8 -> 16),
    /// then the pixel stage to 32x32 (bicubic from 16).
    static let cascade = #"{"model": "ldm-sr", "image": "ldm-sr/low.png", "steps": 4, "count": 2, "seed": 21, "formats": ["png", "npy", "stages"], "stages": [{"model": "pixel-sr", "sampler": "euler", "steps": 3, "width": 32, "height": 32, "noise_level": 80}]}"#

    static func writeJob(_ json: String) throws -> String {
        let directory = try TestSupport.temporaryDirectory()
        try FileManager.default.createSymbolicLink(atPath: "\(directory)/ldm-sr", withDestinationPath: "\(root)/ldm-sr")
        try json.write(toFile: "\(directory)/job.json", atomically: true, encoding: .utf8)
        return directory
    }

    /// Stage 2 is the model alone on stage 1's images: the final samples are
    /// what pixel-sr renders from stage-1/ with stage 2's seeds and options.
    @Test func aCascadeConditionsEachStageOnTheOneBefore() throws {
        let directory = try Self.writeJob(Self.cascade)
        let render = try Self.oneShot().run(jobPath: "\(directory)/job.json", outputDirectory: "\(directory)/out")
        let fm = FileManager.default
        for file in ["image-0001.png", "grid.png", "samples.npy", "job.json", "stage-1/image-0001.png", "stage-1/samples.npy"] {
            #expect(fm.fileExists(atPath: "\(directory)/out/\(file)"), "\(file)")
        }
        #expect(try NPYFile.read(path: "\(directory)/out/stage-1/samples.npy").shape == [2, 3, 16, 16])
        let final = try NPYFile.read(path: "\(directory)/out/samples.npy")
        #expect(final.shape == [2, 3, 32, 32])
        let resolved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(directory)/out/job.json"))) as! [String: Any]
        let stages = resolved["stages"] as? [[String: Any]]
        #expect(stages?.first?["noise_level"] as? Int == 80)
        #expect(stages?.first?["seed"] as? [UInt64] == render.plan.stages[1].seeds)
        #expect(render.plan.stages[1].seeds == [Job.imageSeed(Job.imageSeed(21, 0), 2), Job.imageSeed(Job.imageSeed(21, 1), 2)])

        // the second stage alone, on the first stage's images
        let stage = render.plan.stages[1]
        let model = try ModelResolver(directories: [Self.root]).load("pixel-sr", relativeTo: nil)
        let alone = try Render(plan: stage, model: model, runtime: KernelRuntime(threadCount: 2),
                               lowResolution: CascadeRender.conditioningInput(render.stageImages[0], range: -1...1))
        #expect(try alone.run().isBitIdentical(to: final))
    }

    /// Checkpointed after any step of either stage, or at the stage boundary, a
    /// cascade resumes in that stage with the earlier stage's images and ends
    /// with the same bits, earlier stages included.
    @Test func aCascadeResumesBitIdenticallyInEveryStage() throws {
        let directory = try Self.writeJob(Self.cascade)
        let plan = try Self.oneShot().plan(jobPath: "\(directory)/job.json")
        let resolver = ModelResolver(directories: [Self.root])
        func make() throws -> CascadeRender {
            try CascadeRender(plan: plan, runtime: KernelRuntime(threadCount: 2)) { try resolver.load($0, relativeTo: nil) }
        }
        let whole = try make()
        let final = try whole.run().sample
        for cut in 1..<plan.totalSteps {
            let first = try make()
            while first.completedSteps < cut {
                try first.current.step()
                if first.current.isFinished { try first.advance() }
            }
            let checkpoint = first.checkpoint(jobKey: "job")
            let data = try JSONEncoder().encode(checkpoint)
            let resumed = try make()
            #expect(try resumed.resume(from: JSONDecoder().decode(RenderCheckpoint.self, from: data), jobKey: "job"))
            #expect(resumed.stage == (cut < 4 ? 0 : 1), "cut \(cut)")
            #expect(try resumed.run().sample.isBitIdentical(to: final), "resumed after \(cut) steps")
            #expect(resumed.stageImages[0].isBitIdentical(to: whole.stageImages[0]))
        }
        // another job's checkpoint starts it over
        let other = try make()
        #expect(try other.resume(from: whole.checkpoint(jobKey: "other"), jobKey: "job") == false)
        #expect(other.stage == 0 && other.completedSteps == 0)
    }

    @Test(arguments: [
        (#"{"model": "pixel-sr", "steps": 2}"#, "this model upscales an image: give \"image\", or make it a later stage of a cascade"),
        (#"{"model": "fashion-mnist", "steps": 2, "image": "ldm-sr/low.png"}"#,
         "image: this model does not upscale images (a super-resolution model does; image-to-image takes init_image)"),
        (#"{"model": "fashion-mnist", "steps": 2, "noise_level": 5}"#, "noise_level: this model is not a super-resolution model"),
        (#"{"model": "ldm-sr", "steps": 2, "image": "ldm-sr/low.png", "noise_level": 5}"#,
         "noise_level: this model reads its image without noise augmentation"),
        (#"{"model": "ldm-sr", "steps": 2, "image": "ldm-sr/low.png", "width": 64}"#,
         "this model upscales 8x8 to 16x16: leave out width and height"),
        (#"{"model": "sd-upscale", "steps": 2, "image": "ldm-sr/low.png", "prompt": "x", "noise_level": 351}"#,
         "noise_level 351 is outside 0...350 for this model"),
        (#"{"model": "fashion-mnist", "steps": 2, "stages": [{"model": "pixel-sr", "steps": 2}]}"#,
         "stage 2 (pixel-sr): this model upscales 3-channel images, and the stage before makes 1-channel ones"),
        (#"{"model": "ldm-sr", "steps": 2, "image": "ldm-sr/low.png", "stages": [{"model": "fashion-mnist"}]}"#,
         "stage 2 (fashion-mnist): a later stage of a cascade must be a super-resolution model; this one takes no image"),
        (#"{"model": "ldm-sr", "steps": 2, "image": "ldm-sr/low.png", "stages": [{"model": "pixel-sr", "count": 3}]}"#,
         "stage 2: \"count\" is not a stage key (a stage takes beta_schedule, guidance, height, model, negative_prompt, noise_level, prompt, sampler, sampler_options, steps, timestep_spacing, width)"),
        (#"{"model": "ldm-sr", "steps": 2, "image": "ldm-sr/low.png", "formats": ["latents"], "stages": [{"model": "pixel-sr"}]}"#,
         "format latents: a cascade's images are its last stage's; ask for \"stages\" to keep each stage's"),
        (#"{"model": "ldm-sr", "steps": 2, "image": "ldm-sr/low.png", "stages": [{"model": "sd-upscale", "steps": 2}]}"#,
         "stage 2 (sd-upscale): this model is text-conditioned: give \"prompt\""),
    ])
    func cascadesAreCheckedStageByStage(_ json: String, _ message: String) throws {
        let directory = try Self.writeJob(json)
        // a stage's key error names the job file first
        let error = #expect(throws: DiffusionError.self) { try Self.oneShot().plan(jobPath: "\(directory)/job.json") }
        #expect(error?.message == message || error?.message == "\(directory)/job.json: \(message)")
    }

    /// A text-conditioned stage reads the job's prompt unless it gives its own.
    @Test func aTextStageInheritsTheJobsPrompt() throws {
        let directory = try Self.writeJob(#"{"model": "ldm-sr", "steps": 2, "image": "ldm-sr/low.png", "prompt": "a boot", "stages": [{"model": "sd-upscale", "steps": 2}, {"model": "sd-upscale", "steps": 2, "prompt": "a bag"}]}"#)
        let plan = try Self.oneShot().plan(jobPath: "\(directory)/job.json")
        #expect(plan.stages[1].prompts == ["a boot"])
        #expect(plan.stages[2].prompts == ["a bag"])
        #expect(plan.stages[2].conditioningShape == [3, 32, 32])
    }
}
