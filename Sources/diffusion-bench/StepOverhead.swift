import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation

/// Times model evaluations of the cifar10-size U-Net (made class-conditional so
/// that classifier-free guidance applies) with every sampler and reports the
/// share of each spent outside the U-Net: the sampler and guidance plugins and
/// the host around them.
func runStepOverhead(_ options: BenchOptions) throws {
    guard let data = FileManager.default.contents(atPath: options.config) else { fail("cannot read \(options.config)") }
    var config = try UNet2DConfig(json: data, source: options.config)
    config.numClassEmbeds = 11
    let unet = try UNet2DModel(config: config, weights: RandomWeights(seed: 0))
    let description = ModelDescription(
        sampleShape: config.sampleShape, classCount: 11, nullClass: 10, hasClassifier: false, recommendedGuidanceScale: nil,
        schedulerConfigData: Data(#"{"_class_name": "DDIMScheduler", "beta_schedule": "linear"}"#.utf8),
        schedulerConfigSource: "the benchmark's scheduler config")
    let model = LoadedModel(directory: nil, description: description, denoiser: unet, classifier: nil, contentHash: "random")
    let registry = PluginRegistry(directories: PluginRegistry.defaultDirectories())
    let runtime = KernelRuntime(threadCount: options.threads)
    print("\nModel evaluations on the same U-Net (class-conditional), 4 images with cfg 3 (batch 8), \(options.threads) threads:")
    print("time outside the U-Net (sampler, guidance, host) per evaluation, every sampler")
    print("sampler            evaluations  ms/evaluation  U-Net ms  outside %")
    for sampler in registry.samplers.keys.sorted() {
        let json = #"{"model": "m", "sampler": "\#(sampler)", "steps": 6, "count": 4, "seed": 1, "class": [1, 2, 3, 4], "guidance": {"kind": "cfg", "scale": 3}, "sampler_options": \#(benchOptions[sampler] ?? "{}")}"#
        let job = try Job(json: Data(json.utf8), source: sampler)
        let render = try Render(job: job, model: model, registry: registry, runtime: runtime, limits: RenderLimits(),
                                initNoise: nil)
        try render.step()  // warm-up, not counted
        let (step0, model0) = (render.stepSeconds, render.modelSeconds)
        _ = try render.run()
        let evaluations = Double(render.completedEvaluations - 1)
        let stepMs = (render.stepSeconds - step0) / evaluations * 1000
        let modelMs = (render.modelSeconds - model0) / evaluations * 1000
        print(sampler.padding(toLength: 18, withPad: " ", startingAt: 0)
              + String(format: " %11.0f  %13.1f  %8.1f  %9.2f", evaluations, stepMs, modelMs, (stepMs - modelMs) / stepMs * 100))
    }
}

/// Options that keep a sampler's 6 steps short (langevin's 100 evaluations a level).
private let benchOptions = ["langevin": #"{"steps_per_level": 2}"#]
