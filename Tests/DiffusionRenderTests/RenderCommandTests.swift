import CPNG
import DiffusionKernels
import DiffusionRender
import Foundation
import Testing

/// `diffusiond render` as a user runs it: the real binary, real files.
@Suite struct RenderCommandTests {
    static let binary = "\(TestSupport.buildDirectory)/diffusiond"

    struct Outcome {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    func run(_ arguments: [String]) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        let (out, err) = (Pipe(), Pipe())
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, stdout: stdout, stderr: stderr)
    }

    /// Writes `job` into a fresh directory beside a copy of the Gaussian-mixture model.
    func jobFile(_ job: String) throws -> (directory: String, job: String) {
        let directory = try TestSupport.temporaryDirectory()
        try FileManager.default.copyItem(atPath: "\(TestSupport.fixtures)/gmm", toPath: "\(directory)/gmm")
        try job.write(toFile: "\(directory)/job.json", atomically: true, encoding: .utf8)
        return (directory, "\(directory)/job.json")
    }

    func render(_ job: String, extra: [String] = []) throws -> (Outcome, String) {
        let (directory, file) = try jobFile(job)
        return (try run(["render", file, "--output", "\(directory)/out", "--quiet"] + extra), directory)
    }

    @Test func rendersAndAnImageIsReproducibleFromItsSeed() throws {
        let (first, directory) = try render(#"{"model": "./gmm", "steps": 30, "count": 3, "seed": 5, "class": [0, 1, 2], "formats": ["png", "npy"]}"#)
        #expect(first.status == 0, "\(first.stderr)")
        let files = try FileManager.default.contentsOfDirectory(atPath: "\(directory)/out").sorted()
        #expect(files == ["grid.png", "image-0000.png", "image-0001.png", "image-0002.png", "job.json", "samples.npy"])
        let resolved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(directory)/out/job.json"))) as! [String: Any]
        let seeds = (resolved["seed"] as! [NSNumber]).map(\.uint64Value)
        #expect(seeds == (0..<3).map { Job.imageSeed(5, $0) })
        #expect(resolved["sampler"] as? String == "ddpm")
        let png = try Data(contentsOf: URL(fileURLWithPath: "\(directory)/out/image-0001.png"))
        #expect(png.range(of: Data("iTXtdiffusiond".utf8)) != nil)
        #expect(png.range(of: Data("\"seed\":\(seeds[1])".utf8)) != nil)
        // AUTOMATIC1111's "parameters" text, which the tools people use read.
        let parameters = "tEXtparameters\0Steps: 30, Sampler: DDPM, Class: 1, Seed: \(seeds[1]), Size: 2x1, Model hash: "
        #expect(png.range(of: Data(parameters.utf8)) != nil, "\(String(decoding: png, as: UTF8.self))")
        #expect(png.range(of: Data(", Model: ./gmm".utf8)) != nil)
        var (w, h, c) = (UInt32(0), UInt32(0), Int32(0))
        var error = [CChar](repeating: 0, count: 128)
        #expect(dfn_png_read("\(directory)/out/grid.png", nil, 0, &w, &h, &c, &error, 128) == 0)
        #expect((w, h, c) == (4, 2, 1))

        let (again, second) = try render(#"{"model": "./gmm", "steps": 30, "count": 1, "seed": [\#(seeds[1])], "class": 1, "formats": ["npy"]}"#)
        #expect(again.status == 0, "\(again.stderr)")
        let all = try NPYFile.read(path: "\(directory)/out/samples.npy")
        let one = try NPYFile.read(path: "\(second)/out/samples.npy")
        #expect(one.isBitIdentical(to: all.slice(1..<2)))
    }

    @Test(arguments: [
        (#"{"model": "./gmm", "sampler": "plms"}"#, #"sampler "plms" is not provided by any plugin (available: ddim, ddpm, dpmsolver++, euler, euler_ancestral, heun, langevin, lcm, lms, pndm, score_sde_ve, unipc)"#),
        (#"{"model": "./gmm", "steps": 10"#, "job.json: not valid JSON"),
        (#"{"model": "./gmm", "steps": 5000}"#, "steps 5000 is over the limit of 1000"),
        (#"{"model": "./gmm", "class": 7}"#, "class 7 is out of range: this model has labels 0...3"),
        (#"{"model": "./gmm", "colour": "red"}"#, #"unknown key "colour" (see docs/jobs.md)"#),
        (#"{"model": "./gmm", "init_noise": "noise.npy", "count": 2}"#, "init_noise has shape [1, 1, 1, 2]; this job needs [2, 1, 1, 2]"),
        (#"{"model": "./gmm", "guidance": {"kind": "cfg", "scale": 2, "rescale": 0.7}}"#, "guidance: rescale is not a setting of cfg"),
        (#"{"model": "./gmm", "sampler_options": {"etta": 0.5}, "sampler": "ddim"}"#, "sampler_options: etta is not a setting of sampler ddim or schedule linear"),
        (#"{"model": "./nowhere"}"#, #"model "./nowhere" not found"#),
        (#"{"model": "./gmm", "seed": -1}"#, "seed must be a whole number in 0...9223372036854775807"),
    ])
    func badInputsAreOneLineErrors(job: String, message: String) throws {
        let (directory, file) = try jobFile(job)
        try NPYFile.write(Tensor(zeros: [1, 1, 1, 2]), path: "\(directory)/noise.npy")
        let outcome = try run(["render", file, "--output", "\(directory)/out", "--quiet"])
        #expect(outcome.status == 1)
        let lines = outcome.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix("diffusiond: ") && lines[0].contains(message), "\(outcome.stderr)")
    }

    /// A Gaussian-mixture model of `channels` channels beside the job, as ./mix.
    func mixture(channels: Int, in directory: String) throws {
        try FileManager.default.createDirectory(atPath: "\(directory)/mix", withIntermediateDirectories: true)
        try #"{"_class_name": "GaussianMixture", "scheduler": ["diffusers", "DDPMScheduler"]}"#
            .write(toFile: "\(directory)/mix/model_index.json", atomically: true, encoding: .utf8)
        try #"{"shape": [\#(channels), 2, 2], "components": [{"mean": 0.5, "std": 0.3, "weight": 1, "label": 0}]}"#
            .write(toFile: "\(directory)/mix/gmm.json", atomically: true, encoding: .utf8)
    }

    /// A model of 2 channels renders as npy and as grey+alpha PNGs; one of 5
    /// channels is refused before the first step when PNGs are asked for.
    @Test func outputsAreCheckedAgainstTheChannelsBeforeTheFirstStep() throws {
        let (directory, file) = try jobFile(#"{"model": "./mix", "sampler": "ddpm", "steps": 5, "count": 2, "seed": 1, "formats": ["npy", "png"]}"#)
        try mixture(channels: 2, in: directory)
        let two = try run(["render", file, "--output", "\(directory)/out", "--quiet"])
        #expect(two.status == 0, "\(two.stderr)")
        #expect(try NPYFile.read(path: "\(directory)/out/samples.npy").shape == [2, 2, 2, 2])
        var (w, h, c) = (UInt32(0), UInt32(0), Int32(0))
        var error = [CChar](repeating: 0, count: 128)
        #expect(dfn_png_read("\(directory)/out/image-0001.png", nil, 0, &w, &h, &c, &error, 128) == 0)
        #expect((w, h, c) == (2, 2, 2))

        try FileManager.default.removeItem(atPath: "\(directory)/mix")
        try mixture(channels: 5, in: directory)
        let five = try run(["render", file, "--output", "\(directory)/five"])
        #expect(five.status == 1)
        #expect(five.stderr == "diffusiond: this model's images have 5 channels and a PNG holds 1 to 4: ask for \"formats\": [\"npy\"]\n")
        #expect(!five.stderr.contains("step "), "refused after rendering: \(five.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/five"))
        try #"{"model": "./mix", "sampler": "ddpm", "steps": 5, "formats": ["npy"]}"#.write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try run(["render", file, "--output", "\(directory)/five", "--quiet"]).status == 0)
    }

    /// A pipeline this host does not render as a whole is refused, naming what.
    @Test(arguments: [
        (#"{"_class_name": "StableDiffusionXLPipeline", "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "EulerDiscreteScheduler"]}"#,
         "model_index.json: pipeline StableDiffusionXLPipeline is not supported (supported: DDIMPipeline, DDPMPipeline, GaussianMixture, LDMPipeline, LDMSuperResolutionPipeline, PixelSuperResolutionPipeline, ScoreSdeVePipeline, StableDiffusionPipeline, StableDiffusionUpscalePipeline)"),
        (#"{"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}"#,
         "model_index.json: a LDMPipeline needs its vqvae component"),
        (#"{"_class_name": "DDPMPipeline", "vqvae": ["diffusers", "VQModel"], "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}"#,
         "model_index.json: component vqvae (VQModel) is not supported in a DDPMPipeline (this host reads scheduler + unet)"),
        (#"{"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"]}"#,
         "model_index.json: component unet is a UNet2DConditionModel; a DDPMPipeline here needs UNet2DModel"),
    ])
    func unsupportedPipelinesAreRefused(index: String, message: String) throws {
        let (directory, file) = try jobFile(#"{"model": "./ldm", "steps": 2}"#)
        try FileManager.default.copyItem(atPath: "\(TestSupport.fixtures)/unet-tiny", toPath: "\(directory)/ldm")
        try index.write(toFile: "\(directory)/ldm/model_index.json", atomically: true, encoding: .utf8)
        for arguments in [["--output", "\(directory)/out"], ["--dry-run"]] {
            let outcome = try run(["render", file] + arguments)
            #expect(outcome.status == 1)
            #expect(outcome.stderr.hasPrefix("diffusiond: ") && outcome.stderr.hasSuffix("\(message)\n"), "\(outcome.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/out"))
    }

    /// Settings that would diverge are refused at once or end the render with a
    /// reason; none reaches the output as a NaN.
    @Test func divergingSettingsNeverTrap() throws {
        for scale in ["-1e308", "1e30"] {
            let (_, outcome) = (0, try render(#"{"model": "./gmm", "class": 1, "guidance": {"kind": "cfg", "scale": \#(scale)}}"#).0)
            #expect(outcome.status == 1)
            #expect(outcome.stderr.contains("guidance cfg: scale must lie in [-1000.0, 1000.0]"), "\(outcome.stderr)")
        }
        let betas = Array(repeating: "0.5", count: 1000).joined(separator: ", ")
        let (outcome, directory) = try render(#"{"model": "./gmm", "sampler": "ddim", "steps": 20, "sampler_options": {"trained_betas": [\#(betas)], "clip_sample": false}}"#)
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("produced values that are not finite (NaN or infinity)"), "\(outcome.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/out/image-0000.png"))
    }

    @Test func dryRunPrintsTheResolvedJobAndRendersNothing() throws {
        let (directory, file) = try jobFile(#"{"model": "./gmm", "steps": 7, "count": 2, "seed": 3, "class": 1}"#)
        let outcome = try run(["render", file, "--dry-run"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let resolved = try #require(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
        #expect(resolved["sampler"] as? String == "ddpm" && resolved["steps"] as? Int == 7)
        #expect((resolved["seed"] as? [NSNumber])?.map(\.uint64Value) == [Job.imageSeed(3, 0), Job.imageSeed(3, 1)])
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == ["gmm", "job.json"])
        try #"{"model": "./gmm", "class": 9}"#.write(toFile: file, atomically: true, encoding: .utf8)
        let bad = try run(["render", file, "--dry-run"])
        #expect(bad.status == 1 && bad.stderr == "diffusiond: class 9 is out of range: this model has labels 0...3\n")
    }

    @Test func aModelNameNotFoundSaysWhereItLooked() throws {
        let (directory, file) = try jobFile(#"{"model": "gmm-missing"}"#)
        let outcome = try run(["render", file, "--output", "\(directory)/out", "--models", directory])
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("model \"gmm-missing\" not found (looked in: \(directory)/gmm-missing, "), "\(outcome.stderr)")
        #expect(outcome.stderr.contains("a directory beside the job is written ./gmm-missing"))
    }

    @Test func aTruncatedCheckpointIsAnError() throws {
        let (directory, file) = try jobFile(#"{"model": "./tiny", "class": 1}"#)
        try FileManager.default.copyItem(atPath: "\(TestSupport.fixtures)/unet-tiny", toPath: "\(directory)/tiny")
        let weights = "\(directory)/tiny/unet/diffusion_pytorch_model.safetensors"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: weights))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: weights))
        let outcome = try run(["render", file, "--output", "\(directory)/out"])
        #expect(outcome.status == 1)
        #expect(outcome.stderr.hasPrefix("diffusiond: ") && outcome.stderr.contains("tiny/unet/diffusion_pytorch_model.safetensors: tensor "),
                "\(outcome.stderr)")
        #expect(outcome.stderr.contains("outside the"), "\(outcome.stderr)")
    }

    @Test func aPluginOfAnotherABIIsLoggedAndSkipped() throws {
        let plugins = try TestSupport.temporaryDirectory()
        for name in try FileManager.default.contentsOfDirectory(atPath: TestSupport.buildDirectory)
        where name.hasPrefix("libdiffusion-plugin-") && name.hasSuffix(".so") {
            try FileManager.default.copyItem(atPath: "\(TestSupport.buildDirectory)/\(name)", toPath: "\(plugins)/\(name)")
        }
        try PluginRegistryTests().compile("libdiffusion-plugin-future.so", in: plugins, abi: "(2u << 16)")
        let (outcome, _) = try render(#"{"model": "./gmm", "steps": 5}"#, extra: ["--plugins", plugins])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stderr.contains("libdiffusion-plugin-future.so not loaded: built for plugin ABI 2.0, this host speaks 1.1"))
    }
}
