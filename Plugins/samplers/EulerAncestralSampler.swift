/// `euler_ancestral`: Euler steps in σ with ancestral noise (k-diffusion's
/// `sample_euler_ancestral`, after Karras et al. 2022 and Song et al. 2021).
///
/// Matches diffusers' `EulerAncestralDiscreteScheduler` with its config names
/// and defaults: `prediction_type` (epsilon, v_prediction), `timestep_spacing`
/// (default linspace), `steps_offset`. The noise comes from each image's
/// generator, so an image's result is its seed's alone. Limitations: diffusers'
/// class has no Karras σ, and neither has this; `rescale_betas_zero_snr` is refused.
import DiffusionPluginKit

final class EulerAncestralInstance: DiscreteSigmaSampler {
    let host: UnsafePointer<dfn_host>
    let sigmaOptions: DiscreteSigmaPlan.Options
    let settings: SamplerSettings
    let schedule: SigmaSchedule
    var plan: DiscreteSigmaPlan?
    var scratch: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options, features: [], spacing: .linspace, predictions: [.epsilon, .vPrediction])
        sigmaOptions = try DiscreteSigmaPlan.Options(options, keys: [])
        schedule = SigmaSchedule(alphasCumprod: Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps))))
    }


    /// One step per image from σ to σ_next:
    /// 1. x̂₀ from the model output at σ;
    /// 2. σ_up = √(σ_next²(σ² − σ_next²)/σ²), σ_down = √(σ_next² − σ_up²);
    /// 3. x_next = x + (σ_down − σ)·(x − x̂₀)/σ + σ_up·z.
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard let plan, plan.timesteps.indices.contains(index) else { throw PluginError("step \(index) before set_timesteps planned it") }
        let (sigma, next) = (plan.sigmas[index], plan.sigmas[index + 1])
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).squareRoot()
        let down = (next * next - up * up).squareRoot()
        let dt = Float(down - sigma)
        if scratch.count < size { scratch = [Float](repeating: 0, count: size) }
        try scratch.withUnsafeMutableBufferPointer { buffer in
            for image in 0..<images {
                let offset = image * size
                let (x, out) = (sample + offset, previous + offset)
                for i in 0..<size {
                    let x0 = originalInSigmaSpace(settings.predictionType, sigma: sigma, sample: x[i], output: output[offset + i])
                    original?[offset + i] = x0
                    out[i] = x[i] + (x[i] - x0) / Float(sigma) * dt
                }
                try addNoise(host: host, generators: generators, image: image, sigma: up, into: out, count: size,
                             scratch: buffer.baseAddress!)
            }
        }
    }
}

nonisolated(unsafe) let eulerAncestralSampler = samplerDescriptor(
    name: "euler_ancestral", summary: "Euler ancestral in σ, noise from each image's seed; diffusers' EulerAncestralDiscreteScheduler",
    classes: ["EulerAncestralDiscreteScheduler"]
) { host, options, levels, error, errorSize in
    makeSampler(error, errorSize) {
        try EulerAncestralInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
    }
}
