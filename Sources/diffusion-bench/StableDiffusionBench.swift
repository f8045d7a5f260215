import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation

/// The latent section of `make bench`: Stable Diffusion 1.5's parts at 512x512
/// with random weights from its published configs (tools/bench/sd15), each
/// measured in a child process of its own (its peak RSS is its own), beside
/// PyTorch + diffusers in the same run (tools/bench/torch_sd.py):
/// - `unet`: one U-Net forward on a CFG pair of 64x64 latents, 77-token states;
/// - `decoder`: the VAE decoder, 64x64 latents to a 512x512 image;
/// - `render`: a whole 20-step DDIM text-to-image job at the default CFG, planned
///   and executed as the daemon does (text encoder, U-Net, decoder).
enum StableDiffusionBench {
    static let root = "tools/bench/sd15"
    /// Any CLIP tokenizer serves: the ids' values do not change the cost.
    static let tokenizer = "Tests/LatentFixtures/sd1-tiny/tokenizer"
    static let parts = ["unet", "decoder", "render"]

    struct Result: Codable {
        var runtime: String
        var part: String
        var ms_min: Double
        var ms_median: Double
        var peak_rss_mb: Double
        /// The matrix products' floating-point operations of one run (ours; the same model in PyTorch).
        var flops: Double?
    }

    static func measure(_ part: String, options: BenchOptions) throws -> Result {
        let runtime = KernelRuntime(threadCount: options.threads)
        let run: () throws -> Void
        switch part {
        case "unet":
            let unet = try UNet2DConditionModel(config: config(UNet2DConditionConfig.init, "unet"), weights: RandomWeights(seed: 0))
            let sample = random([2, 4, 64, 64], seed: 1)
            let context = random([2, 768, 77, 1], seed: 2)
            run = { _ = try unet.forward(sample, timesteps: [500, 500], context: context, on: runtime) }
        case "decoder":
            let vae = try Autoencoder(config: config(AutoencoderConfig.init, "vae"), weights: RandomWeights(seed: 0))
            let latents = random([1, 4, 64, 64], seed: 3)
            run = { _ = try vae.decode(latents, on: runtime) }
        default:
            let model = try loadedModel()
            let registry = PluginRegistry(directories: PluginRegistry.defaultDirectories())
            let job = try Job(json: Data(#"{"model": "sd15", "sampler": "ddim", "steps": 20, "seed": 1, "prompt": "a photo of an astronaut riding a horse on mars", "formats": ["npy"]}"#.utf8), source: "bench")
            run = {
                let render = try Render(job: job, model: model, registry: registry, runtime: runtime,
                                        limits: RenderLimits(), initNoise: nil)
                _ = try render.images(of: try render.run())
            }
        }
        // a warm-up touches the scratch memory first; a whole render warms itself
        if part != "render" { try run() }
        let before = runtime.floatingPointOperations
        var times: [Double] = []
        for _ in 0..<iterations(part, options) {
            let start = DispatchTime.now().uptimeNanoseconds
            try run()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
        }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Result(runtime: "diffusiond", part: part, ms_min: times.min()!, ms_median: times.sorted()[times.count / 2],
                      peak_rss_mb: Double(usage.ru_maxrss) / 1024,
                      flops: Double(runtime.floatingPointOperations - before) / Double(times.count))
    }

    /// Runs of each part: the render, minutes long, once.
    static func iterations(_ part: String, _ options: BenchOptions) -> Int { part == "render" ? 1 : min(options.iterations, 2) }

    static func config<Config>(_ parse: (Data, String) throws -> Config, _ name: String) throws -> Config {
        let path = "\(root)/\(name)/config.json"
        guard let data = FileManager.default.contents(atPath: path) else { fail("cannot read \(path) (run from the repository root)") }
        return try parse(data, path)
    }

    static func random(_ shape: [Int], seed: UInt64) -> Tensor {
        let tensor = Tensor(uninitialized: shape)
        var generator = Philox(seed: seed)
        generator.fillNormal(tensor.data, count: tensor.count)
        return tensor
    }

    /// SD 1.5's three models with random weights, as a directory would load them.
    static func loadedModel() throws -> LoadedModel {
        let unet = try UNet2DConditionModel(config: config(UNet2DConditionConfig.init, "unet"), weights: RandomWeights(seed: 0))
        let vae = try Autoencoder(config: config(AutoencoderConfig.init, "vae"), weights: RandomWeights(seed: 1))
        let text = try CLIPTextModel(config: config(CLIPTextConfig.init, "text_encoder"), weights: RandomWeights(seed: 2))
        let tokenizer = try CLIPTokenizer(directory: tokenizer)
        let scheduler = "\(root)/scheduler/scheduler_config.json"
        let description = ModelDescription(
            sampleShape: unet.config.sampleShape, classCount: nil, nullClass: nil, hasClassifier: false,
            recommendedGuidanceScale: nil, schedulerConfigData: FileManager.default.contents(atPath: scheduler),
            schedulerConfigSource: scheduler,
            latent: LatentSpace(factor: 8, scalingFactor: vae.config.scalingFactor, imageChannels: 3),
            text: TextConditioning(maxLength: tokenizer.maxLength, contextDim: 768), sizeMultiple: 64)
        return try LoadedModel(directory: nil, description: description,
                               parts: .init(denoiser: unet, autoencoder: vae,
                                            textEncoder: TextEncoder(tokenizer: tokenizer, model: text)),
                               contentHash: "random")
    }

    static func runComparison(_ options: BenchOptions) {
        let me = Bundle.main.executablePath ?? CommandLine.arguments[0]
        print("\nStable Diffusion 1.5 at 512x512 (64x64 latents), random weights from its configs, \(options.threads) threads")
        print("unet: one forward of a CFG pair; decoder: 64x64 latents to 512x512; render: 20 DDIM steps, CFG 7.5, text encoder and decoder")
        let header = ["part", "runtime", "s min", "s median", "GFLOP/s", "peak RSS MB", "time ours/torch", "RSS ours/torch"]
        var rows: [[String]] = []
        for part in parts {
            guard let ours = measureInChild(me, ["--measure-sd", part, "--threads", "\(options.threads)", "--iterations", "\(options.iterations)"], as: Result.self)
            else { fail("the measurement of \(part) failed") }
            let torch = options.python.flatMap {
                measureInChild($0, ["tools/bench/torch_sd.py", "--part", part, "--threads", "\(options.threads)",
                                    "--iterations", "\(iterations(part, options))"], as: Result.self)
            }
            for result in [ours] + (torch.map { [$0] } ?? []) {
                let isOurs = result.runtime == "diffusiond"
                rows.append([part, result.runtime, String(format: "%.2f", result.ms_min / 1000),
                             String(format: "%.2f", result.ms_median / 1000),
                             String(format: "%.1f", (ours.flops ?? 0) / result.ms_min / 1e6),
                             String(format: "%.0f", result.peak_rss_mb),
                             isOurs ? torch.map { String(format: "%.2f", ours.ms_min / $0.ms_min) } ?? "-" : "",
                             isOurs ? torch.map { String(format: "%.2f", ours.peak_rss_mb / $0.peak_rss_mb) } ?? "-" : ""])
            }
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max()! }
        for row in [header] + rows {
            print(row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                .joined(separator: "  "))
        }
    }
}
