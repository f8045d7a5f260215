import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation
import Testing

/// Latent and text-conditioned renders against diffusers' own pipelines
/// (tools/reference/make_latent_fixtures.py): StableDiffusionPipeline in SD 1.x's
/// form (PNDM from the scheduler class, CFG at the default 7.5, a negative prompt
/// per image) and 2.x's (v-prediction DDIM, fp16 variant files, `!` padding),
/// and LDMPipeline (VQModel); and StableDiffusionImg2ImgPipeline from a PNG with
/// ddim, euler and dpmsolver++. The decoder's output before clamping.
@Suite struct LatentRenderTests {
    static let root = "\(TestSupport.packageRoot)/Tests/LatentFixtures"
    static let cases = [("sd1-tiny", "render-cfg"), ("sd2-tiny", "render-cfg"), ("ldm-tiny", "render"),
                        ("sd2-tiny", "img2img-ddim"), ("sd1-tiny", "img2img-euler"), ("sd1-tiny", "img2img-dpm")]

    struct Info: Decodable { let cases: [String: Case] }
    struct Case: Decodable { let diffusers_f32_max_abs_deviation: Double; let tolerance: Double }

    func render(_ model: String, _ name: String, output: String) throws -> Render {
        var render = OneShotRender()
        render.pluginDirectories = [TestSupport.buildDirectory]
        render.modelDirectories = [Self.root]
        return try render.run(jobPath: "\(Self.root)/\(model)/\(name).json", outputDirectory: output).current
    }

    @Test(arguments: cases)
    func matchesDiffusers(_ model: String, _ name: String) throws {
        let info = try JSONDecoder().decode(Info.self, from: Data(contentsOf: URL(fileURLWithPath: "\(Self.root)/\(model)/cases.json"))).cases[name]!
        let output = try TestSupport.temporaryDirectory()
        try render(model, name, output: output)
        let samples = try NPYFile.read(path: "\(output)/samples.npy")
        let expected = try NPYFile.read(path: "\(Self.root)/\(model)/\(name)-expected.npy")
        let error = Double(samples.maxAbsDifference(expected))
        print("latent render \(model)/\(name): max |ours - diffusers float64| = \(error), tolerance \(info.tolerance) "
              + "(diffusers float32 deviation \(info.diffusers_f32_max_abs_deviation))")
        #expect(error <= info.tolerance)
    }

    /// PNGs are the decoded images; job.json and every PNG's metadata carry the prompts.
    @Test func outputsHoldDecodedImagesLatentsAndPrompts() throws {
        let output = try TestSupport.temporaryDirectory()
        let job = #"{"model": "sd1-tiny", "steps": 3, "count": 2, "seed": 5, "prompt": ["a photo of a boot", "a bag"], "negative_prompt": "blurry", "formats": ["png", "npy", "latents"], "width": 24, "height": 32}"#
        try job.write(toFile: "\(output)/job.json", atomically: true, encoding: .utf8)
        var oneShot = OneShotRender()
        oneShot.pluginDirectories = [TestSupport.buildDirectory]
        oneShot.modelDirectories = [Self.root]
        let render = try oneShot.run(jobPath: "\(output)/job.json", outputDirectory: "\(output)/out").current
        #expect(try NPYFile.read(path: "\(output)/out/latents.npy").shape == [2, 4, 16, 12])
        #expect(try NPYFile.read(path: "\(output)/out/samples.npy").shape == [2, 3, 32, 24])
        let resolved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(output)/out/job.json"))) as! [String: Any]
        #expect(resolved["prompt"] as? [String] == ["a photo of a boot", "a bag"])
        #expect(resolved["negative_prompt"] as? [String] == ["blurry", "blurry"])
        #expect((resolved["guidance"] as? [String: Any])?["scale"] as? Double == 7.5)
        #expect(render.plan.guidanceKind == "cfg")
        let png = try Data(contentsOf: URL(fileURLWithPath: "\(output)/out/image-0001.png"))
        #expect(png.range(of: Data("a bag\nNegative prompt: blurry\nSteps: 3".utf8)) != nil)
    }

    @Test(arguments: [
        (#"{"model": "sd1-tiny", "steps": 2}"#, "this model is text-conditioned: give \"prompt\""),
        (#"{"model": "ldm-tiny", "steps": 2, "prompt": "a cat"}"#, "this model is not text-conditioned: it takes no prompt"),
        (#"{"model": "sd1-tiny", "steps": 2, "prompt": "x", "width": 18}"#, "width and height must be multiples of 4 pixels for this model, not 18x16"),
        (#"{"model": "sd1-tiny", "steps": 2, "prompt": ["x", "y"]}"#, "job: prompt must be a string or a list of count (1) strings"),
        (#"{"model": "ldm-tiny", "steps": 2, "formats": ["latents", "png"]}"#, nil),
        (#"{"model": "ldm-tiny", "steps": 2, "init_image": "\#(root)/sd1-tiny/init.png"}"#,
         "init_image: this model has no image encoder (image-to-image needs an AutoencoderKL, as StableDiffusionPipeline's)"),
        (#"{"model": "sd1-tiny", "steps": 2, "prompt": "x", "strength": 0.5}"#, "job: strength must be given with an init_image only"),
        (#"{"model": "sd1-tiny", "steps": 2, "prompt": "x", "init_image": "\#(root)/sd1-tiny/init.png", "width": 32}"#,
         "init_image is 16x16: leave out width and height, or give its own"),
        (#"{"model": "sd1-tiny", "steps": 2, "prompt": "x", "init_image": "\#(root)/sd1-tiny/init.png", "strength": 0.1}"#,
         "strength 0.1 of 2 steps runs no step: raise strength or steps"),
        (#"{"model": "sd1-tiny", "steps": 2, "prompt": "x", "init_image": "\#(root)/sd1-tiny/cases.json"}"#, nil),
    ] as [(String, String?)])
    func jobsAreCheckedAgainstTheModel(_ json: String, _ message: String?) throws {
        func plan() throws -> RenderPlan {
            let job = try Job(json: Data(json.utf8), source: "job")
            let model = try ModelResolver(directories: [Self.root]).directory(job.model, relativeTo: nil).describe()
            return try RenderPlan(job: job, model: model, registry: TestSupport.registry, limits: RenderLimits(), initNoise: nil)
        }
        if let message {
            #expect(throws: DiffusionError(message)) { try plan() }
        } else if json.contains("cases.json") {
            #expect(throws: (any Error).self) { try plan() }  // not a PNG: libpng's own line
        } else {
            #expect(try plan().sampleShape == [3, 8, 8])
        }
    }

    /// The shipped text-to-image model renders what diffusers' own
    /// StableDiffusionPipeline renders from the same x_T (tools/train/make_text_reference.py).
    @Test func theShippedTextModelMatchesDiffusers() throws {
        struct Reference: Decodable {
            let prompts: [String]
            let steps: Int
            let guidance_scale: Double
            let init_noise: [Float]
            let expected: [Float]
            let diffusers_f32_max_abs_deviation: Double
            let tolerance: Double
        }
        let path = "\(TestSupport.packageRoot)/models/fashion-mnist-text"
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: "\(path)/reference.json")))
        var job = Job(model: path)
        (job.steps, job.count, job.prompts, job.seeds) = (reference.steps, 2, reference.prompts, [1, 2])
        let model = try ModelDirectory(path: path).load()
        let render = try Render(job: job, model: model, registry: TestSupport.registry, runtime: KernelRuntime(threadCount: 2),
                                limits: RenderLimits(), initNoise: Tensor(shape: [2, 4, 8, 8], scalars: reference.init_noise))
        #expect(render.plan.guidanceOptions["scale"] as? Double == reference.guidance_scale)
        let images = try render.images(of: try render.run())
        let error = Double(images.maxAbsDifference(Tensor(shape: images.shape, scalars: reference.expected)))
        print("shipped text model: max |ours - diffusers float64| = \(error), tolerance \(reference.tolerance) "
              + "(diffusers float32 deviation \(reference.diffusers_f32_max_abs_deviation))")
        #expect(error <= reference.tolerance)
    }

    /// A text job (image-to-image, so the encoder's draw is in the generators'
    /// state too) checkpointed after any step resumes to the same bits: the text
    /// encoder runs again when the render is made, the rest comes from the checkpoint.
    @Test func aTextJobResumesBitIdentically() throws {
        let json = #"{"model": "sd1-tiny", "sampler": "dpmsolver++", "steps": 6, "count": 2, "seed": 3, "prompt": ["boots", "a bag"], "negative_prompt": "blurry", "init_image": "\#(Self.root)/sd1-tiny/init.png", "strength": 0.7}"#
        let job = try Job(json: Data(json.utf8), source: "job")
        let model = try ModelResolver(directories: [Self.root]).load(job.model, relativeTo: nil)
        func make() throws -> Render {
            try Render(job: job, model: model, registry: TestSupport.registry, runtime: KernelRuntime(threadCount: 2),
                       limits: RenderLimits(), initNoise: nil)
        }
        let whole = try make().run()
        for cut in 1..<4 {
            let first = try make()
            for _ in 0..<cut { try first.step() }
            let checkpoint = first.checkpoint(jobKey: "job")
            let resumed = try make()
            #expect(try resumed.resume(from: checkpoint, jobKey: "job"))
            #expect(try resumed.run().isBitIdentical(to: whole), "resumed after \(cut) steps")
        }
    }
}
