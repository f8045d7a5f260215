/// `ddim`: denoising diffusion implicit models (Song, Meng & Ermon, ICLR 2021).
///
/// Matches diffusers' `DDIMScheduler.step` with its config names and defaults:
/// `eta` (0 = deterministic), `set_alpha_to_one`, `use_clipped_model_output`,
/// and the shared `prediction_type`, `clip_sample`, `clip_sample_range`,
/// `thresholding`, `timestep_spacing` and `steps_offset` (see `SamplerSettings`).
/// Like diffusers, the previous timestep is always t − T/steps (integer
/// division), whatever the spacing. Limitation: diffusers' `rescale_betas_zero_snr`
/// is not offered.
import DiffusionPluginKit

final class DDIMInstance: TimestepSampler {
    let host: UnsafePointer<dfn_host>
    let settings: SamplerSettings
    let alphasCumprod: [Double]
    let finalAlphaCumprod: Double
    let eta: Double
    let useClippedModelOutput: Bool
    var timesteps: [Int32] = []
    var scratch: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options)
        alphasCumprod = Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps)))
        finalAlphaCumprod = try options.bool("set_alpha_to_one", default: true) ? 1 : alphasCumprod[0]
        eta = try options.number("eta", default: 0)
        guard eta >= 0 else { throw PluginError("eta must be 0 or more, not \(eta)") }
        useClippedModelOutput = try options.bool("use_clipped_model_output", default: false)
    }

    /// One DDIM update per image (Song et al., eq. 12):
    /// 1. x̂₀ and ε̂ from the model output (`SamplerSettings.predict`);
    /// 2. σ_t = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev) (eq. 16);
    /// 3. x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ_t²)·ε̂ + σ_t·z.
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard timesteps.indices.contains(index) else { throw PluginError("step \(index) of \(timesteps.count) timesteps") }
        let t = Int(timesteps[index])
        let prev = t - alphasCumprod.count / timesteps.count
        let alpha = alphasCumprod[t]
        let alphaPrev = prev >= 0 ? alphasCumprod[prev] : finalAlphaCumprod
        let variance = (1 - alphaPrev) / (1 - alpha) * (1 - alpha / alphaPrev)
        let sigma = eta * variance.squareRoot()
        let direction = Float(max(0, 1 - alphaPrev - sigma * sigma).squareRoot())
        let keep = Float(alphaPrev.squareRoot())
        if scratch.count < 3 * size { scratch = [Float](repeating: 0, count: 3 * size) }
        try scratch.withUnsafeMutableBufferPointer { buffer in
            let x0 = buffer.baseAddress!, epsilon = x0 + size, noise = epsilon + size
            for image in 0..<images {
                let offset = image * size
                settings.predict(host: host, alphaProduct: alpha, modelOutput: output + offset, sample: sample + offset,
                                 count: size, original: x0, epsilon: epsilon)
                if useClippedModelOutput {
                    let (a, b) = (Float(alpha.squareRoot()), Float((1 - alpha).squareRoot()))
                    for i in 0..<size { epsilon[i] = (sample[offset + i] - a * x0[i]) / b }
                }
                let out = previous + offset
                for i in 0..<size { out[i] = keep * x0[i] + direction * epsilon[i] }
                if eta > 0 {
                    try addNoise(host: host, generators: generators, image: image, sigma: sigma, into: out, count: size,
                                 scratch: noise)
                }
                original?.advanced(by: offset).update(from: x0, count: size)
            }
        }
    }
}

// MARK: - The descriptor

nonisolated(unsafe) let ddimPlugin = pluginDescriptor(
    name: "ddim", version: "1.0.0",
    samplers: [samplerDescriptor(name: "ddim", summary: "DDIM (Song et al. 2021); eta 0 is deterministic", classes: ["DDIMScheduler"]) { host, options, levels, error, errorSize in
        makeSampler(error, errorSize) {
            try DDIMInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
        }
    }])

@_cdecl("diffusion_plugin_init")
public func diffusionPluginInit(_ host: UnsafePointer<dfn_host>?) -> UnsafePointer<dfn_plugin>? {
    hostIsCompatible(host) ? ddimPlugin : nil
}
