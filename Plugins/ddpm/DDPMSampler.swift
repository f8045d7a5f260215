/// `ddpm`: denoising diffusion probabilistic models (Ho, Jain & Abbeel, NeurIPS 2020).
///
/// Matches diffusers' `DDPMScheduler.step` with its config names and defaults:
/// `variance_type` `fixed_small` (σ² = β̃_t, eq. 7) or `fixed_large` (σ² = β_t),
/// any number of steps up to the training steps (the previous timestep is the
/// next one chosen, as in diffusers), and the shared `prediction_type`,
/// `clip_sample`, `clip_sample_range`, `thresholding`, `timestep_spacing` and
/// `steps_offset` (see `SamplerSettings`). Limitations: the `learned` variance
/// types (models that predict their variance) are not offered.
import DiffusionPluginKit

final class DDPMInstance: TimestepSampler {
    let host: UnsafePointer<dfn_host>
    let settings: SamplerSettings
    let alphasCumprod: [Double]
    let fixedLarge: Bool
    var timesteps: [Int32] = []
    var scratch: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options)
        alphasCumprod = Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps)))
        fixedLarge = try options.choice("variance_type", default: "fixed_small",
                                        allowed: ["fixed_small", "fixed_large"]) == "fixed_large"
    }

    /// One ancestral step per image, the posterior q(x_{t−1} | x_t, x̂₀) (Ho et al., eqs. 6–7):
    /// 1. x̂₀ from the model output (`SamplerSettings.predict`);
    /// 2. μ = √ᾱ_prev·β_t/(1−ᾱ_t)·x̂₀ + √α_t·(1−ᾱ_prev)/(1−ᾱ_t)·x_t, with α_t = ᾱ_t/ᾱ_prev;
    /// 3. x_prev = μ + σ_t·z for t > 0, σ_t² = max(β̃_t, 1e−20) or β_t.
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard timesteps.indices.contains(index) else { throw PluginError("step \(index) of \(timesteps.count) timesteps") }
        let t = Int(timesteps[index])
        let prev = index + 1 < timesteps.count ? Int(timesteps[index + 1]) : -1
        let alpha = alphasCumprod[t]
        let alphaPrev = prev >= 0 ? alphasCumprod[prev] : 1
        let currentAlpha = alpha / alphaPrev
        let currentBeta = 1 - currentAlpha
        let originalCoefficient = Float(alphaPrev.squareRoot() * currentBeta / (1 - alpha))
        let sampleCoefficient = Float(currentAlpha.squareRoot() * (1 - alphaPrev) / (1 - alpha))
        let variance = fixedLarge ? currentBeta : max((1 - alphaPrev) / (1 - alpha) * currentBeta, 1e-20)
        if scratch.count < 2 * size { scratch = [Float](repeating: 0, count: 2 * size) }
        try scratch.withUnsafeMutableBufferPointer { buffer in
            let x0 = buffer.baseAddress!, noise = x0 + size
            for image in 0..<images {
                let offset = image * size
                settings.predict(host: host, alphaProduct: alpha, modelOutput: output + offset, sample: sample + offset,
                                 count: size, original: x0, epsilon: nil)
                let out = previous + offset
                for i in 0..<size { out[i] = originalCoefficient * x0[i] + sampleCoefficient * sample[offset + i] }
                if t > 0 {
                    try addNoise(host: host, generators: generators, image: image, sigma: variance.squareRoot(), into: out,
                                 count: size, scratch: noise)
                }
                original?.advanced(by: offset).update(from: x0, count: size)
            }
        }
    }
}

// MARK: - The descriptor

nonisolated(unsafe) let ddpmPlugin = pluginDescriptor(
    name: "ddpm", version: "1.0.0",
    samplers: [samplerDescriptor(name: "ddpm", summary: "DDPM ancestral sampling (Ho et al. 2020), fixed_small or fixed_large variance", classes: ["DDPMScheduler"]) { host, options, levels, error, errorSize in
        makeSampler(error, errorSize) {
            try DDPMInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
        }
    }])

@_cdecl("diffusion_plugin_init")
public func diffusionPluginInit(_ host: UnsafePointer<dfn_host>?) -> UnsafePointer<dfn_plugin>? {
    hostIsCompatible(host) ? ddpmPlugin : nil
}
