/// `heun`: Heun's second-order method on the probability-flow ODE in σ
/// (Karras et al. 2022, Algorithm 1): every step but the last evaluates the
/// model twice, at σ and at the Euler estimate's σ_next; the last is an Euler
/// step to σ = 0. n steps take 2n − 1 evaluations.
///
/// Matches diffusers' `HeunDiscreteScheduler` with its config names and
/// defaults: `prediction_type` (epsilon, v_prediction, sample),
/// `timestep_spacing` (default linspace), `steps_offset`, `use_karras_sigmas`,
/// `clip_sample`, `clip_sample_range`. Limitations: `use_exponential_sigmas`
/// and `use_beta_sigmas` are refused.
import DiffusionPluginKit

final class HeunInstance: DiscreteSigmaSampler {
    let host: UnsafePointer<dfn_host>
    let sigmaOptions: DiscreteSigmaPlan.Options
    let settings: SamplerSettings
    let schedule: SigmaSchedule
    var plan: DiscreteSigmaPlan?
    /// The first half of a step, kept for its second evaluation: d, dt and x.
    var derivative: [Float] = []
    var dt = 0.0
    var start: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options, features: [.clipping], spacing: .linspace)
        sigmaOptions = try DiscreteSigmaPlan.Options(options, keys: [.karras])
        schedule = SigmaSchedule(alphasCumprod: Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps))))
    }

    var steps: Int { plan?.timesteps.count ?? 0 }

    /// Evaluation 2k is step k's first at σ_k; 2k + 1 its second at σ_{k+1}.
    func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        let plan = try DiscreteSigmaPlan(steps: steps, schedule: schedule, settings: settings, options: sigmaOptions)
        self.plan = plan
        derivative = []
        start = []
        return (0..<(2 * steps - 1)).map { index in
            plan.evaluation((index + 1) / 2, step: index / 2)  // σ_k for 2k, σ_{k+1} for 2k + 1
        }
    }

    /// First evaluation (even index) at σ: d = (x − x̂₀)/σ, x_next = x + (σ_next − σ)·d,
    /// d and x kept. Second (odd) at σ_next: d' = (x_next − x̂₀)/σ_next and
    /// x_next = x + (σ_next − σ)·(d + d')/2 (Algorithm 1, lines 7–11).
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard let plan, (0..<(2 * steps - 1)).contains(index) else { throw PluginError("evaluation \(index) before set_timesteps planned it") }
        let count = images * size
        let first = index % 2 == 0
        let sigma = plan.sigmas[(index + 1) / 2]
        if first {
            let next = plan.sigmas[index / 2 + 1]
            dt = next - sigma
            derivative = [Float](repeating: 0, count: count)
            start = Array(UnsafeBufferPointer(start: sample, count: count))
        } else {
            guard derivative.count == count, start.count == count else {
                throw PluginError("evaluation \(index) is the second half of a step whose first half is missing")
            }
        }
        let range = Float(settings.clipSampleRange)
        for i in 0..<count {
            var x0 = originalInSigmaSpace(settings.predictionType, sigma: sigma, sample: sample[i], output: output[i])
            if settings.clipSample { x0 = min(max(x0, -range), range) }
            original?[i] = x0
            let d = (sample[i] - x0) / Float(sigma)
            if first {
                derivative[i] = d
                previous[i] = sample[i] + d * Float(dt)
            } else {
                previous[i] = start[i] + (derivative[i] + d) / 2 * Float(dt)
            }
        }
        if !first {
            derivative = []
            start = []
        }
    }

    /// Version 1: the steps, then the half step (d, dt, x; empty between steps).
    func saveState() -> [UInt8] {
        var writer = StateWriter(version: 1)
        writer.integer(UInt32(steps))
        writer.floats(derivative)
        writer.number(dt)
        writer.floats(start)
        return writer.bytes
    }

    func restoreState(_ bytes: [UInt8]) throws {
        var reader = try StateReader(bytes, version: 1)
        try reader.plan(steps)
        let (d, step, x) = (try reader.floats(), try reader.number(), try reader.floats())
        try reader.finish()
        guard d.count == x.count else { throw PluginError("sampler state has a half step of \(d.count) and \(x.count) values") }
        (derivative, dt, start) = (d, step, x)
    }
}

nonisolated(unsafe) let heunSampler = samplerDescriptor(
    name: "heun", summary: "Heun's 2nd order in σ (Karras et al. 2022), 2 evaluations a step; diffusers' HeunDiscreteScheduler",
    classes: ["HeunDiscreteScheduler"]
) { host, options, levels, error, errorSize in
    makeSampler(error, errorSize) {
        try HeunInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
    }
}
