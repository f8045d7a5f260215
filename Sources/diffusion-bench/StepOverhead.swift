import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation

/// Times render steps of the cifar10-size U-Net (made class-conditional so that
/// classifier-free guidance applies) and reports the share of each step spent
/// outside the U-Net: the sampler and guidance plugins and the host around them.
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
    print("\nRender steps on the same U-Net (class-conditional), \(options.threads) threads: time outside the U-Net")
    print("job                                   steps  ms/step  U-Net ms/step  outside %")
    let jobs = [
        ("ddim, 4 images, cfg 3 (batch 8)", #"{"model": "m", "sampler": "ddim", "steps": 6, "count": 4, "seed": 1, "class": [1, 2, 3, 4], "guidance": {"kind": "cfg", "scale": 3}}"#),
        ("ddpm, 8 images, no guidance", #"{"model": "m", "sampler": "ddpm", "steps": 6, "count": 8, "seed": 2, "class": 3}"#),
    ]
    for (title, json) in jobs {
        let job = try Job(json: Data(json.utf8), source: title)
        let render = try Render(job: job, model: model, registry: registry, runtime: runtime, limits: RenderLimits(),
                                initNoise: nil)
        try render.step()  // warm-up, not counted
        let (step0, model0) = (render.stepSeconds, render.modelSeconds)
        _ = try render.run()
        let steps = Double(render.completedSteps - 1)
        let stepMs = (render.stepSeconds - step0) / steps * 1000
        let modelMs = (render.modelSeconds - model0) / steps * 1000
        print(title.padding(toLength: 38, withPad: " ", startingAt: 0)
              + String(format: "%5.0f  %7.1f  %13.1f  %9.2f", steps, stepMs, modelMs, (stepMs - modelMs) / stepMs * 100))
    }
}
