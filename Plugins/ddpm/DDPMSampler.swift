/// `ddpm`: denoising diffusion probabilistic models (Ho, Jain & Abbeel, NeurIPS 2020).
///
/// Matches diffusers' `DDPMScheduler.step` with its config names and defaults:
/// `variance_type` `fixed_small` (σ² = β̃_t, eq. 7), `fixed_large` (σ² = β_t),
/// and for models that predict their variance (out_channels = 2 × in_channels)
/// Improved DDPM's `learned` (σ² = the model's v) and `learned_range`
/// (log σ² = f·log β_t + (1 − f)·log β̃_t with f = (v + 1)/2; Nichol & Dhariwal
/// 2021, eq. 15); any number of steps up to the training steps (the previous
/// timestep is the next one chosen, as in diffusers), and the shared
/// `prediction_type`, `clip_sample`, `clip_sample_range`, `thresholding`,
/// `timestep_spacing` and `steps_offset` (see `SamplerSettings`). Limitation:
/// the `_log` variants of the fixed variances are not offered.
import DiffusionPluginKit
import Foundation

final class DDPMInstance: TimestepSampler {
    let host: UnsafePointer<dfn_host>
    let settings: SamplerSettings
    let alphasCumprod: [Double]
    enum Variance: String { case fixedSmall = "fixed_small", fixedLarge = "fixed_large", learned, learnedRange = "learned_range" }
    let variance: Variance
    var timesteps: [Int32] = []
    var scratch: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options)
        alphasCumprod = Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps)))
        variance = Variance(rawValue: try options.choice(
            "variance_type", default: "fixed_small", allowed: ["fixed_small", "fixed_large", "learned", "learned_range"]))!
    }

    /// The learned variances read the model's second half.
    func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        timesteps = try settings.timesteps(steps: steps, trainSteps: alphasCumprod.count)
        let learned = variance == .learned || variance == .learnedRange
        return timesteps.enumerated().map {
            Evaluation(step: $0, time: Double($1), alphaCumprod: alphasCumprod[Int($1)], modelVariance: learned)
        }
    }

    /// One ancestral step per image, the posterior q(x_{t−1} | x_t, x̂₀) (Ho et al., eqs. 6–7):
    /// 1. x̂₀ from the model output (`SamplerSettings.predict`);
    /// 2. μ = √ᾱ_prev·β_t/(1−ᾱ_t)·x̂₀ + √α_t·(1−ᾱ_prev)/(1−ᾱ_t)·x_t, with α_t = ᾱ_t/ᾱ_prev;
    /// 3. x_prev = μ + σ_t·z for t > 0, σ_t² = max(β̃_t, 1e−20), β_t, or learned.
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
        let posterior = max((1 - alphaPrev) / (1 - alpha) * currentBeta, 1e-20)
        let learned = variance == .learned || variance == .learnedRange
        let stride = learned ? 2 * size : size  // each image's output, then its variance channels
        if scratch.count < 3 * size { scratch = [Float](repeating: 0, count: 3 * size) }
        try scratch.withUnsafeMutableBufferPointer { buffer in
            let x0 = buffer.baseAddress!, noise = x0 + size, deviation = noise + size
            for image in 0..<images {
                let offset = image * size
                settings.predict(host: host, alphaProduct: alpha, modelOutput: output + image * stride, sample: sample + offset,
                                 count: size, original: x0, epsilon: nil)
                let out = previous + offset
                for i in 0..<size { out[i] = originalCoefficient * x0[i] + sampleCoefficient * sample[offset + i] }
                if t > 0 {
                    let predicted = output + image * stride + size
                    switch variance {
                    case .fixedSmall, .fixedLarge:
                        let sigma = (variance == .fixedLarge ? currentBeta : posterior).squareRoot()
                        try addNoise(host: host, generators: generators, image: image, sigma: sigma, into: out, count: size,
                                     scratch: noise)
                    case .learned, .learnedRange:
                        // a σ for every value: √v, or exp(½(f·log β_t + (1 − f)·log β̃_t))
                        let (low, high) = (log(posterior), log(currentBeta))
                        for i in 0..<size {
                            let v = Double(predicted[i])
                            deviation[i] = Float(variance == .learned
                                ? v.squareRoot() : exp(0.5 * ((v + 1) / 2 * high + (1 - (v + 1) / 2) * low)))
                        }
                        guard let generator = generators?[image] else { throw PluginError("this step needs a generator per image") }
                        host.pointee.random_normal(generator, Int64(size), noise)
                        for i in 0..<size { out[i] += deviation[i] * noise[i] }
                    }
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
