/// `langevin`: annealed Langevin dynamics (Song & Ermon, "Generative Modeling
/// by Estimating Gradients of the Data Distribution", NeurIPS 2019,
/// Algorithm 1), for noise-conditional score networks.
///
/// The job's `steps` are the L noise levels, geometric from `sigma_max` (σ₁)
/// down to `sigma_min` (σ_L); at level i it runs `steps_per_level` (T) updates
///     α_i = ε·σ_i²/σ_L²,   x ← x + (α_i/2)·s(x, σ_i) + √α_i·z,
/// with `step_size` ε. The defaults are the paper's (σ₁ = 1, σ_L = 0.01,
/// T = 100, ε = 2e-5, with L = 10 as its usual job); σ₁ should be about the
/// largest distance between training points (Song & Ermon 2020). The model
/// takes σ as its time input and returns the score. Differences from the
/// paper: x₀ is σ₁-scaled normal noise (the host's init_noise) rather than
/// uniform noise, and there is no final denoising step (NCSNv2's addition).
import DiffusionPluginKit
import Foundation

final class LangevinInstance: SamplerInstance {
    let host: UnsafePointer<dfn_host>
    let sigmaMin: Double, sigmaMax: Double
    let stepsPerLevel: Int
    let stepSize: Double
    var levels: [Double] = []
    var scratch: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions) throws {
        self.host = host
        sigmaMin = try options.number("sigma_min", default: 0.01)
        sigmaMax = try options.number("sigma_max", default: 1)
        guard sigmaMin > 0, sigmaMax > sigmaMin else { throw PluginError("need 0 < sigma_min < sigma_max, not \(sigmaMin) and \(sigmaMax)") }
        stepsPerLevel = try options.integer("steps_per_level", default: 100)
        guard (1...10_000).contains(stepsPerLevel) else { throw PluginError("steps_per_level must be 1 to 10000, not \(stepsPerLevel)") }
        stepSize = try options.number("step_size", default: 2e-5, in: 1e-12...1)
    }

    /// σ_i = σ₁(σ_L/σ₁)^{(i−1)/(L−1)}; level i is T evaluations at σ_i.
    func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        guard steps >= 2 else { throw PluginError("langevin needs at least 2 noise levels (steps), not \(steps)") }
        levels = (0..<steps).map { sigmaMax * pow(sigmaMin / sigmaMax, Double($0) / Double(steps - 1)) }
        return levels.enumerated().flatMap { level, sigma in
            [Evaluation](repeating: Evaluation(step: level, time: sigma, alphaCumprod: SigmaSchedule.alphaCumprod(sigma: sigma)),
                         count: stepsPerLevel)
        }
    }

    var initNoiseSigma: Double { sigmaMax }

    /// Algorithm 1, lines 3–6, for evaluation `index` (level index / T).
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard (0..<(levels.count * stepsPerLevel)).contains(index) else { throw PluginError("evaluation \(index) before set_timesteps planned it") }
        let sigma = levels[index / stepsPerLevel]
        let alpha = stepSize * sigma * sigma / (sigmaMin * sigmaMin)
        let (drift, spread) = (Float(alpha / 2), Float(alpha.squareRoot()))
        if scratch.count < size { scratch = [Float](repeating: 0, count: size) }
        try scratch.withUnsafeMutableBufferPointer { buffer in
            let noise = buffer.baseAddress!
            for image in 0..<images {
                let offset = image * size
                guard let generator = generators?[image] else { throw PluginError("this step needs a generator per image") }
                host.pointee.random_normal(generator, Int64(size), noise)
                for i in 0..<size {
                    let (x, s) = (sample[offset + i], output[offset + i])
                    previous[offset + i] = x + drift * s + spread * noise[i]
                    original?[offset + i] = x + Float(sigma * sigma) * s  // Tweedie's x̂₀, for previews
                }
            }
        }
    }

    func saveState() -> [UInt8] { PlanOnlyState.encode(steps: levels.count) }

    func restoreState(_ bytes: [UInt8]) throws { try PlanOnlyState.check(bytes, steps: levels.count) }
}

nonisolated(unsafe) let langevinSampler = samplerDescriptor(
    name: "langevin", summary: "annealed Langevin dynamics (Song & Ermon 2019) over geometric σ levels, for score models"
) { host, options, _, error, errorSize in
    makeSampler(error, errorSize) { try LangevinInstance(host: host!, options: PluginOptions(host: host!, options: options)) }
}
