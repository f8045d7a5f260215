// diffusion-bench: times the U-Net forward of the google/ddpm-cifar10-32
// architecture on the kernel runtime and, when a Python with torch and diffusers
// is at hand, the same model in PyTorch in the same run. Each measurement runs in
// a child process of its own, so that its peak RSS is its own. Then it times
// whole render steps on the same model, to show what the sampler and guidance
// plugins cost beside the U-Net, and the daemon under load: submit latency with
// a growing queue, and the gain of batching compatible jobs; and Stable
// Diffusion 1.5's U-Net, decoder and whole render beside PyTorch's.
import Foundation

let options = BenchOptions.parse(CommandLine.arguments.dropFirst())
if let kills = options.soakKills {
    try runSoak(kills: kills, options: options)
} else if let batch = options.measureBatch {
    print(try measureKernelRuntime(batch: batch, options: options).json)
} else if let part = options.measureStableDiffusion {
    print(String(decoding: try JSONEncoder().encode(try StableDiffusionBench.measure(part, options: options)), as: UTF8.self))
} else if options.stableDiffusionOnly {
    StableDiffusionBench.runComparison(options)
} else {
    if !options.daemonOnly {
        runComparison(options)
        try runStepOverhead(options)
        StableDiffusionBench.runComparison(options)
    }
    try runDaemonBench(options)
}
