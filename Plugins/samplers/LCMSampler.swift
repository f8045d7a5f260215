/// `lcm`: multistep sampling of latent consistency models (Luo et al.,
/// "Latent Consistency Models", 2023, Algorithm 1): each step maps x_t to the
/// consistency function's x₀ estimate f(x_t, t) = c_skip·x_t + c_out·x̂₀ and,
/// but for the last, noises it again to the next timestep. For LCM-distilled
/// models, in 2–8 steps.
///
/// Matches diffusers' `LCMScheduler` with its config names and defaults:
/// `original_inference_steps` (50: the skipping schedule the model was distilled
/// on), `timestep_scaling` (10), `prediction_type`, `clip_sample` (false),
/// `clip_sample_range`, `thresholding`, `set_alpha_to_one` (true). The noise
/// comes from each image's generator. Limitations: custom timesteps and
/// `strength` (image-to-image) are not offered; `rescale_betas_zero_snr` is refused.
import DiffusionPluginKit

final class LCMInstance: SamplerInstance {
    let host: UnsafePointer<dfn_host>
    let settings: SamplerSettings
    let alphasCumprod: [Double]
    let finalAlphaCumprod: Double
    let originalSteps: Int
    let timestepScaling: Double
    var timesteps: [Int] = []
    var scratch: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        try refuseUnsupported(options, ["rescale_betas_zero_snr"])
        settings = try SamplerSettings(options, spacing: .leading, clipSampleDefault: false)
        alphasCumprod = Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps)))
        finalAlphaCumprod = try options.bool("set_alpha_to_one", default: true) ? 1 : alphasCumprod[0]
        originalSteps = try options.integer("original_inference_steps", default: 50)
        guard (1...alphasCumprod.count).contains(originalSteps) else {
            throw PluginError("original_inference_steps must be 1 to num_train_timesteps (\(alphasCumprod.count)), not \(originalSteps)")
        }
        timestepScaling = try options.number("timestep_scaling", default: 10, in: 0...1e6)
    }

    /// The distillation's timesteps k·i − 1 (k = T / original steps), taken at
    /// n evenly spaced indices from the largest.
    func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        guard (1...originalSteps).contains(steps) else {
            throw PluginError("steps must be 1 to original_inference_steps (\(originalSteps)), not \(steps)")
        }
        let k = alphasCumprod.count / originalSteps
        let origin = (1...originalSteps).reversed().map { $0 * k - 1 }
        timesteps = (0..<steps).map { origin[Int((Double($0) * Double(origin.count) / Double(steps)).rounded(.down))] }
        return timesteps.enumerated().map { Evaluation(step: $0, time: Double($1), alphaCumprod: alphasCumprod[$1]) }
    }

    /// Step i at t: 1. x̂₀ from the model output; 2. c_skip = σ_d²/((λt)² + σ_d²),
    /// c_out = λt/√((λt)² + σ_d²) with σ_d = 0.5 and λ = timestep_scaling;
    /// 3. d = c_out·x̂₀ + c_skip·x_t; 4. x_next = √ᾱ_next·d + √(1 − ᾱ_next)·z, or d at the last step.
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard timesteps.indices.contains(index) else { throw PluginError("step \(index) before set_timesteps planned it") }
        let t = timesteps[index]
        let last = index == timesteps.count - 1
        let alphaNext = last ? finalAlphaCumprod : alphasCumprod[timesteps[index + 1]]
        let scaled = Double(t) * timestepScaling, dataSigma = 0.5
        let skip = Float(dataSigma * dataSigma / (scaled * scaled + dataSigma * dataSigma))
        let out = Float(scaled / (scaled * scaled + dataSigma * dataSigma).squareRoot())
        if scratch.count < 2 * size { scratch = [Float](repeating: 0, count: 2 * size) }
        try scratch.withUnsafeMutableBufferPointer { buffer in
            let x0 = buffer.baseAddress!, noise = x0 + size
            for image in 0..<images {
                let offset = image * size
                settings.predict(host: host, alphaProduct: alphasCumprod[t], modelOutput: output + offset, sample: sample + offset,
                                 count: size, original: x0, epsilon: nil)
                let next = previous + offset
                for i in 0..<size { next[i] = out * x0[i] + skip * sample[offset + i] }
                original?.advanced(by: offset).update(from: next, count: size)
                if !last {
                    let (keep, spread) = (Float(alphaNext.squareRoot()), Float((1 - alphaNext).squareRoot()))
                    for i in 0..<size { next[i] *= keep }
                    try addNoise(host: host, generators: generators, image: image, sigma: Double(spread), into: next,
                                 count: size, scratch: noise)
                }
            }
        }
    }

    func saveState() -> [UInt8] { PlanOnlyState.encode(steps: timesteps.count) }

    func restoreState(_ bytes: [UInt8]) throws { try PlanOnlyState.check(bytes, steps: timesteps.count) }
}

nonisolated(unsafe) let lcmSampler = samplerDescriptor(
    name: "lcm", summary: "latent consistency model sampling (Luo et al. 2023), 2-8 steps; diffusers' LCMScheduler",
    classes: ["LCMScheduler"]
) { host, options, levels, error, errorSize in
    makeSampler(error, errorSize) {
        try LCMInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
    }
}
