/// `score_sde_ve`: the predictor–corrector sampler of the variance-exploding
/// SDE (Song et al., "Score-Based Generative Modeling through Stochastic
/// Differential Equations", ICLR 2021, Algorithms 2 and 4): each step runs
/// `correct_steps` Langevin corrector evaluations, then the reverse-diffusion
/// predictor, all at one σ. The model takes σ as its time input and returns
/// the score ∇ log p_σ(x); the last step returns the predictor's mean, as
/// diffusers' ScoreSdeVePipeline does.
///
/// Matches diffusers' `ScoreSdeVeScheduler` driven by that pipeline, with its
/// config names and defaults: `snr` (0.15), `correct_steps` (1), `sigma_min`
/// (0.01), `sigma_max` (1348), `sampling_eps` (1e-5). One difference: diffusers
/// averages the corrector's gradient and noise norms over the batch, which
/// makes an image depend on its batch-mates; here each image uses its own, as
/// diffusers does for a batch of one.
import DiffusionPluginKit
import Foundation

final class ScoreSdeVeInstance: SamplerInstance {
    let host: UnsafePointer<dfn_host>
    let snr: Double
    let correctSteps: Int
    let sigmaMin: Double, sigmaMax: Double, samplingEpsilon: Double
    /// σ given to the model at each step, and the discrete levels the predictor steps between.
    var sigmas: [Double] = []
    var discreteSigmas: [Double] = []
    var scratch: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions) throws {
        self.host = host
        snr = try options.number("snr", default: 0.15, in: 0...100)
        correctSteps = try options.integer("correct_steps", default: 1)
        guard (0...100).contains(correctSteps) else { throw PluginError("correct_steps must be 0 to 100, not \(correctSteps)") }
        sigmaMin = try options.number("sigma_min", default: 0.01)
        sigmaMax = try options.number("sigma_max", default: 1348)
        guard sigmaMin > 0, sigmaMax > sigmaMin else { throw PluginError("need 0 < sigma_min < sigma_max, not \(sigmaMin) and \(sigmaMax)") }
        samplingEpsilon = try options.number("sampling_eps", default: 1e-5, in: 1e-12...1)
    }

    /// t_i = linspace(1, sampling_eps, n): σ_i = σ_min(σ_max/σ_min)^{t_i}; the predictor's
    /// levels are exp(linspace(log σ_min, log σ_max, n)). Step i evaluates the model
    /// `correct_steps` + 1 times at σ_i.
    func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        guard steps >= 2 else { throw PluginError("score_sde_ve needs at least 2 steps, not \(steps)") }
        let n = Double(steps - 1)
        sigmas = (0..<steps).map { i in
            let t = 1 + (samplingEpsilon - 1) * Double(i) / n
            return sigmaMin * pow(sigmaMax / sigmaMin, t)
        }
        discreteSigmas = (0..<steps).map { exp(log(sigmaMin) + (log(sigmaMax) - log(sigmaMin)) * Double($0) / n) }
        return sigmas.enumerated().flatMap { step, sigma in
            [Evaluation](repeating: Evaluation(step: step, time: sigma, alphaCumprod: SigmaSchedule.alphaCumprod(sigma: sigma)),
                         count: correctSteps + 1)
        }
    }

    var initNoiseSigma: Double { sigmaMax }

    /// Evaluation k of step i is a corrector for k < correct_steps (Algorithm 4):
    /// ε = 2(snr·‖z‖/‖s‖)², x ← x + ε·s + √(2ε)·z; else the predictor
    /// (Algorithm 2): with g² = σ_j² − σ_{j−1}² of the discrete levels (j = n−1−i,
    /// σ_{−1} = 0), x̄ = x + g²·s and x ← x̄ + g·z (x̄ at the last step).
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        let perStep = correctSteps + 1
        guard (0..<(sigmas.count * perStep)).contains(index) else { throw PluginError("evaluation \(index) before set_timesteps planned it") }
        let (step, stage) = index.quotientAndRemainder(dividingBy: perStep)
        let sigma = sigmas[step]
        if scratch.count < size { scratch = [Float](repeating: 0, count: size) }
        try scratch.withUnsafeMutableBufferPointer { buffer in
            let noise = buffer.baseAddress!
            for image in 0..<images {
                let offset = image * size
                let (x, score, out) = (sample + offset, output + offset, previous + offset)
                guard let generator = generators?[image] else { throw PluginError("this step needs a generator per image") }
                host.pointee.random_normal(generator, Int64(size), noise)
                if stage < correctSteps {
                    var (gradient, noiseNorm) = (0.0, 0.0)
                    for i in 0..<size {
                        gradient += Double(score[i]) * Double(score[i])
                        noiseNorm += Double(noise[i]) * Double(noise[i])
                    }
                    let ratio = snr * noiseNorm.squareRoot() / gradient.squareRoot()
                    let stepSize = 2 * ratio * ratio
                    let (a, b) = (Float(stepSize), Float((2 * stepSize).squareRoot()))
                    for i in 0..<size { out[i] = x[i] + a * score[i] + b * noise[i] }
                } else {
                    let level = sigmas.count - 1 - step
                    let adjacent = level == 0 ? 0 : discreteSigmas[level - 1]
                    let diffusion = (discreteSigmas[level] * discreteSigmas[level] - adjacent * adjacent).squareRoot()
                    let (drift, spread) = (Float(diffusion * diffusion), Float(diffusion))
                    let last = step == sigmas.count - 1
                    for i in 0..<size { out[i] = x[i] + drift * score[i] + (last ? 0 : spread * noise[i]) }
                }
                // Tweedie's estimate x̂₀ = x + σ²·s, for previews
                if let original {
                    for i in 0..<size { original[offset + i] = x[i] + Float(sigma * sigma) * score[i] }
                }
            }
        }
    }

    func saveState() -> [UInt8] { PlanOnlyState.encode(steps: sigmas.count) }

    func restoreState(_ bytes: [UInt8]) throws { try PlanOnlyState.check(bytes, steps: sigmas.count) }
}

nonisolated(unsafe) let scoreSdeVeSampler = samplerDescriptor(
    name: "score_sde_ve", summary: "VE SDE predictor–corrector (Song et al. 2021) for score models; diffusers' ScoreSdeVeScheduler",
    classes: ["ScoreSdeVeScheduler"]
) { host, options, _, error, errorSize in
    makeSampler(error, errorSize) { try ScoreSdeVeInstance(host: host!, options: PluginOptions(host: host!, options: options)) }
}
