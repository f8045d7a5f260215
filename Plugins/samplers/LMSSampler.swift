/// `lms`: the linear multistep method in σ (k-diffusion's `sample_lms`, after
/// Karras et al. 2022): x_next = x + Σ_j c_j·d_{i−j}, where c_j integrates the
/// Lagrange basis polynomial of the last `order` σ over [σ_i, σ_{i+1}].
///
/// Matches diffusers' `LMSDiscreteScheduler` with its config names and defaults:
/// `prediction_type` (epsilon, v_prediction, sample), `timestep_spacing`
/// (default linspace), `steps_offset`, `use_karras_sigmas`, and its step
/// argument `order` (default 4) as an option. diffusers integrates with
/// scipy's quad; the integrand is a polynomial of degree < 4, which four-point
/// Gauss–Legendre integrates exactly. Limitations: `use_exponential_sigmas` and
/// `use_beta_sigmas` are refused.
import DiffusionPluginKit

final class LMSInstance: DiscreteSigmaSampler {
    let host: UnsafePointer<dfn_host>
    let sigmaOptions: DiscreteSigmaPlan.Options
    let settings: SamplerSettings
    let schedule: SigmaSchedule
    let order: Int
    var plan: DiscreteSigmaPlan?
    /// The last `order` derivatives d = (x − x̂₀)/σ, oldest first.
    var derivatives: [[Float]] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options, features: [], spacing: .linspace)
        sigmaOptions = try DiscreteSigmaPlan.Options(options, keys: [.karras])
        schedule = SigmaSchedule(alphasCumprod: Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps))))
        order = try options.integer("order", default: 4)
        guard (1...4).contains(order) else { throw PluginError("order must be 1 to 4, not \(order)") }
    }

    var steps: Int { plan?.timesteps.count ?? 0 }

    func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        let plan = try DiscreteSigmaPlan(steps: steps, schedule: schedule, settings: settings, options: sigmaOptions)
        self.plan = plan
        derivatives = []
        return (0..<steps).map { plan.evaluation($0, step: $0) }
    }

    /// ∫ from σ_i to σ_{i+1} of Π_{k≠j} (τ − σ_{i−k})/(σ_{i−j} − σ_{i−k}) dτ, by
    /// four-point Gauss–Legendre (exact for these cubics).
    func coefficient(order: Int, index i: Int, current j: Int, sigmas: [Double]) -> Double {
        let nodes = [(-0.8611363115940526, 0.3478548451374538), (-0.3399810435848563, 0.6521451548625461),
                     (0.3399810435848563, 0.6521451548625461), (0.8611363115940526, 0.3478548451374538)]
        let (a, b) = (sigmas[i], sigmas[i + 1])
        return nodes.reduce(0.0) { sum, node in
            let tau = (b - a) / 2 * node.0 + (a + b) / 2
            var product = 1.0
            for k in 0..<order where k != j { product *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k]) }
            return sum + node.1 * product
        } * (b - a) / 2
    }

    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard let plan, plan.timesteps.indices.contains(index) else { throw PluginError("step \(index) before set_timesteps planned it") }
        guard derivatives.count == min(index, order) else {
            throw PluginError("step \(index) with \(derivatives.count) derivatives kept: steps must run in order")
        }
        let count = images * size
        let sigma = plan.sigmas[index]
        var d = [Float](repeating: 0, count: count)
        for i in 0..<count {
            let x0 = originalInSigmaSpace(settings.predictionType, sigma: sigma, sample: sample[i], output: output[i])
            original?[i] = x0
            d[i] = (sample[i] - x0) / Float(sigma)
        }
        derivatives.append(d)
        if derivatives.count > order { derivatives.removeFirst() }
        let used = min(index + 1, order)
        let coefficients = (0..<used).map { Float(coefficient(order: used, index: index, current: $0, sigmas: plan.sigmas)) }
        previous.update(from: sample, count: count)
        // diffusers sums coefficient j with the j-th newest derivative
        for (j, c) in coefficients.enumerated() {
            let derivative = derivatives[derivatives.count - 1 - j]
            for i in 0..<count { previous[i] += c * derivative[i] }
        }
    }

    /// Version 1: the steps, then the derivative history.
    func saveState() -> [UInt8] {
        var writer = StateWriter(version: 1)
        writer.integer(UInt32(steps))
        writer.history(derivatives)
        return writer.bytes
    }

    func restoreState(_ bytes: [UInt8]) throws {
        var reader = try StateReader(bytes, version: 1)
        try reader.plan(steps)
        let history = try reader.history()
        try reader.finish()
        guard history.count <= order else { throw PluginError("sampler state keeps \(history.count) derivatives for order \(order)") }
        derivatives = history
    }
}

nonisolated(unsafe) let lmsSampler = samplerDescriptor(
    name: "lms", summary: "linear multistep in σ, order 1–4; diffusers' LMSDiscreteScheduler",
    classes: ["LMSDiscreteScheduler"]
) { host, options, levels, error, errorSize in
    makeSampler(error, errorSize) {
        try LMSInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
    }
}
