/// `euler`: Euler's method on the probability-flow ODE in σ (Karras et al.,
/// "Elucidating the Design Space of Diffusion-Based Generative Models", 2022,
/// Algorithm 2 with its churn).
///
/// Matches diffusers' `EulerDiscreteScheduler` with its config names and
/// defaults: `prediction_type` (epsilon, v_prediction, sample),
/// `timestep_spacing` (default linspace), `steps_offset`, `use_karras_sigmas`
/// with `sigma_min`/`sigma_max`, `interpolation_type` (linear, log_linear),
/// `final_sigmas_type`, `timestep_type`; and its step arguments `s_churn`,
/// `s_tmin`, `s_tmax`, `s_noise` as options (churn's noise comes from each
/// image's generator). Limitations: `use_exponential_sigmas`,
/// `use_beta_sigmas` and `rescale_betas_zero_snr` are refused.
import DiffusionPluginKit

final class EulerInstance: DiscreteSigmaSampler {
    let host: UnsafePointer<dfn_host>
    let sigmaOptions: DiscreteSigmaPlan.Options
    let settings: SamplerSettings
    let schedule: SigmaSchedule
    let churn: Double, churnMin: Double, churnMax: Double, churnNoise: Double
    var plan: DiscreteSigmaPlan?
    var scratch: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options, features: [], spacing: .linspace)
        sigmaOptions = try DiscreteSigmaPlan.Options(options, keys: [.karras, .interpolation, .finalSigmas, .sigmaBounds, .continuous])
        schedule = SigmaSchedule(alphasCumprod: Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps))))
        churn = try options.number("s_churn", default: 0, in: 0...1000)
        churnMin = try options.number("s_tmin", default: 0)
        churnMax = try options.number("s_tmax", default: .infinity)
        churnNoise = try options.number("s_noise", default: 1, in: 0...10)
    }


    /// One step per image:
    /// 1. γ = min(s_churn/n, √2 − 1) when s_tmin ≤ σ ≤ s_tmax; σ̂ = σ(γ + 1), and
    ///    x ← x + √(σ̂² − σ²)·s_noise·z when γ > 0 (Algorithm 2, lines 5–6);
    /// 2. x̂₀ from the model output at σ̂ (σ for v-prediction, as diffusers);
    /// 3. d = (x − x̂₀)/σ̂ and x_next = x + (σ_next − σ̂)·d (lines 7–8).
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard let plan, plan.timesteps.indices.contains(index) else { throw PluginError("step \(index) before set_timesteps planned it") }
        let sigma = plan.sigmas[index]
        let steps = Double(plan.sigmas.count - 1)
        let gamma = churnMin <= sigma && sigma <= churnMax ? min(churn / steps, 2.0.squareRoot() - 1) : 0
        let sigmaHat = sigma * (gamma + 1)
        let dt = Float(plan.sigmas[index + 1] - sigmaHat)
        let predictionSigma = settings.predictionType == .vPrediction ? sigma : sigmaHat
        if scratch.count < 2 * size { scratch = [Float](repeating: 0, count: 2 * size) }
        try scratch.withUnsafeMutableBufferPointer { buffer in
            let x = buffer.baseAddress!, noise = x + size
            for image in 0..<images {
                let offset = image * size
                x.update(from: sample + offset, count: size)
                if gamma > 0 {
                    try addNoise(host: host, generators: generators, image: image,
                                 sigma: (sigmaHat * sigmaHat - sigma * sigma).squareRoot() * churnNoise, into: x, count: size,
                                 scratch: noise)
                }
                let out = previous + offset
                for i in 0..<size {
                    let x0 = originalInSigmaSpace(settings.predictionType, sigma: predictionSigma, sample: x[i], output: output[offset + i])
                    original?[offset + i] = x0
                    out[i] = x[i] + (x[i] - x0) / Float(sigmaHat) * dt
                }
            }
        }
    }
}

nonisolated(unsafe) let eulerSampler = samplerDescriptor(
    name: "euler", summary: "Euler in σ (Karras et al. 2022), optional churn; diffusers' EulerDiscreteScheduler",
    classes: ["EulerDiscreteScheduler"]
) { host, options, levels, error, errorSize in
    makeSampler(error, errorSize) {
        try EulerInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
    }
}
