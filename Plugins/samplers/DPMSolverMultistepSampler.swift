/// `dpmsolver++`: DPM-Solver++ multistep, orders 1–3, and its SDE variant
/// (Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
/// Probabilistic Models", 2022; the SDE form from their §5 and diffusers).
///
/// Matches diffusers' `DPMSolverMultistepScheduler` with its config names and
/// defaults: `algorithm_type` (dpmsolver++, sde-dpmsolver++), `solver_order`
/// (1–3, default 2), `solver_type` (midpoint, heun), `lower_order_final`,
/// `euler_at_final`, `use_karras_sigmas`, `final_sigmas_type`,
/// `lambda_min_clipped`, `timestep_spacing` (default linspace), `steps_offset`,
/// `prediction_type`, `thresholding`. The SDE's noise comes from each image's
/// generator. A model that predicts its variance has it dropped by the host, as
/// diffusers drops it (`variance_type` learned). Limitations: the deprecated
/// `dpmsolver`/`sde-dpmsolver` (noise prediction) algorithms, Lu lambdas and
/// flow σ are refused.
import DiffusionPluginKit
import Foundation

final class DPMSolverInstance: SamplerInstance {
    let host: UnsafePointer<dfn_host>
    let sigmaOptions: MultistepSigmaPlan.Options
    let settings: SamplerSettings
    let schedule: SigmaSchedule
    let stochastic: Bool
    let order: Int
    let heunSolver: Bool
    let lowerOrderFinal: Bool
    let eulerAtFinal: Bool
    let roundsKarras: Bool
    let lastTimestep: Int
    var plan: MultistepSigmaPlan?
    /// x̂₀ of the last `order` steps, oldest first, and how many lower-order steps ran.
    var history: [[Float]] = []
    var lowerOrderSteps = 0
    var scratch: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options, features: [.thresholding], spacing: .linspace)
        sigmaOptions = try MultistepSigmaPlan.Options(options, karrasBounds: false)
        let alphas = Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps)))
        schedule = SigmaSchedule(alphasCumprod: alphas)
        stochastic = try options.choice("algorithm_type", default: "dpmsolver++",
                                        allowed: ["dpmsolver++", "sde-dpmsolver++"]) == "sde-dpmsolver++"
        order = try options.integer("solver_order", default: 2)
        guard (1...3).contains(order) else { throw PluginError("solver_order must be 1, 2 or 3, not \(order)") }
        heunSolver = try options.choice("solver_type", default: "midpoint", allowed: ["midpoint", "heun"]) == "heun"
        lowerOrderFinal = try options.bool("lower_order_final", default: true)
        eulerAtFinal = try options.bool("euler_at_final", default: false)
        roundsKarras = try options.optionalString("beta_schedule") != "squaredcos_cap_v2"
        // the first timestep index (from T) whose λ is below lambda_min_clipped is never used
        let clip = try options.number("lambda_min_clipped", default: -.infinity)
        let lambdas = alphas.map { 0.5 * log($0) - 0.5 * log(1 - $0) }.reversed()
        lastTimestep = alphas.count - lambdas.prefix(while: { $0 < clip }).count
    }

    var steps: Int { plan?.timesteps.count ?? 0 }

    func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        let plan = try MultistepSigmaPlan(steps: steps, schedule: schedule, settings: settings, options: sigmaOptions,
                                          roundsKarras: roundsKarras, karrasFinal: false, last: lastTimestep)
        self.plan = plan
        history = []
        lowerOrderSteps = 0
        return plan.evaluations
    }

    /// Step i, with h = λ_next − λ_i, r_k = h_k/h and the D's of eqs. (8)–(9) of
    /// the paper (diffusers' `multistep_dpm_solver_*_order_update`):
    /// 1. x̂₀ from the model output at σ_i, thresholded as configured;
    /// 2. the order: 1 at the start and (lower_order_final, euler_at_final, a
    ///    zero final σ) at the end, 2 one step later/earlier, else solver_order;
    /// 3. ODE: x_next = (σ_next/σ_i)·x − α_next(e^{−h} − 1)·D0 + (order terms);
    ///    SDE: x_next = (σ_next/σ_i)e^{−h}·x + α_next(1 − e^{−2h})·D0 + (order terms)
    ///    + σ_next√(1 − e^{−2h})·z.
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard let plan, plan.timesteps.indices.contains(index) else { throw PluginError("step \(index) before set_timesteps planned it") }
        // a fresh state may start part-way (image-to-image), as diffusers' begin_index: first order, no corrector
        guard lowerOrderSteps <= min(index, order) else { throw PluginError("step \(index) out of order: steps must run in order") }
        let n = plan.timesteps.count
        let count = images * size
        let finalLower = index == n - 1 && (eulerAtFinal || (lowerOrderFinal && n < 15) || plan.finalSigmaIsZero)
        let secondLower = index == n - 2 && lowerOrderFinal && n < 15

        var x0 = [Float](repeating: 0, count: count)
        let alphaProduct = SigmaSchedule.alphaCumprod(sigma: plan.sigmas[index])
        x0.withUnsafeMutableBufferPointer { buffer in
            for image in 0..<images {
                settings.predict(host: host, alphaProduct: alphaProduct, modelOutput: output + image * size,
                                 sample: sample + image * size, count: size, original: buffer.baseAddress! + image * size,
                                 epsilon: nil)
            }
        }
        original?.update(from: x0, count: count)
        history.append(x0)
        if history.count > order { history.removeFirst() }

        let used = order == 1 || lowerOrderSteps < 1 || finalLower ? 1 : (order == 2 || lowerOrderSteps < 2 || secondLower ? 2 : 3)
        let t = plan.alphaSigmaLambda(index + 1), s0 = plan.alphaSigmaLambda(index)
        let h = t.lambda - s0.lambda
        // x_next = a·x + b·D0 + c·D1 + e·D2 (+ σ_next√(1 − e^{−2h})·z)
        var (a, b, c, e) = (0.0, 0.0, 0.0, 0.0)
        let ratio = t.sigma / s0.sigma
        if stochastic {
            a = ratio * exp(-h)
            b = t.alpha * (1 - exp(-2 * h))
        } else {
            a = ratio
            b = -t.alpha * (exp(-h) - 1)
        }
        let m0 = history[history.count - 1]
        var d1 = [Float](), d2 = [Float]()
        if used == 2 {
            let h0 = s0.lambda - plan.alphaSigmaLambda(index - 1).lambda
            let r0 = h0 / h
            let m1 = history[history.count - 2]
            d1 = (0..<count).map { Float(1 / r0) * (m0[$0] - m1[$0]) }
            switch (stochastic, heunSolver) {
            case (false, false): c = -0.5 * t.alpha * (exp(-h) - 1)
            case (false, true): c = t.alpha * ((exp(-h) - 1) / h + 1)
            case (true, false): c = 0.5 * t.alpha * (1 - exp(-2 * h))
            case (true, true): c = t.alpha * ((1 - exp(-2 * h)) / (-2 * h) + 1)
            }
        } else if used == 3 {
            let s1 = plan.alphaSigmaLambda(index - 1), s2 = plan.alphaSigmaLambda(index - 2)
            let (h0, h1) = (s0.lambda - s1.lambda, s1.lambda - s2.lambda)
            let (r0, r1) = (h0 / h, h1 / h)
            let (m1, m2) = (history[history.count - 2], history[history.count - 3])
            d1 = [Float](repeating: 0, count: count)
            d2 = [Float](repeating: 0, count: count)
            for i in 0..<count {
                let d10 = Float(1 / r0) * (m0[i] - m1[i]), d11 = Float(1 / r1) * (m1[i] - m2[i])
                d1[i] = d10 + Float(r0 / (r0 + r1)) * (d10 - d11)
                d2[i] = Float(1 / (r0 + r1)) * (d10 - d11)
            }
            if stochastic {
                c = t.alpha * ((1 - exp(-2 * h)) / (-2 * h) + 1)
                e = t.alpha * ((1 - exp(-2 * h) - 2 * h) / ((2 * h) * (2 * h)) - 0.5)
            } else {
                c = t.alpha * ((exp(-h) - 1) / h + 1)
                e = -t.alpha * ((exp(-h) - 1 + h) / (h * h) - 0.5)
            }
        }
        let (fa, fb, fc, fe) = (Float(a), Float(b), Float(c), Float(e))
        for i in 0..<count {
            var value = fa * sample[i] + fb * m0[i]
            if used >= 2 { value += fc * d1[i] }
            if used == 3 { value += fe * d2[i] }
            previous[i] = value
        }
        if stochastic {
            if scratch.count < size { scratch = [Float](repeating: 0, count: size) }
            let noiseScale = t.sigma * (1 - exp(-2 * h)).squareRoot()
            try scratch.withUnsafeMutableBufferPointer { buffer in
                for image in 0..<images {
                    try addNoise(host: host, generators: generators, image: image, sigma: noiseScale,
                                 into: previous + image * size, count: size, scratch: buffer.baseAddress!)
                }
            }
        }
        if lowerOrderSteps < order { lowerOrderSteps += 1 }
    }

    /// Version 1: the steps, the lower-order count, then the x̂₀ history.
    func saveState() -> [UInt8] {
        var writer = StateWriter(version: 1)
        writer.integer(UInt32(steps))
        writer.integer(UInt32(lowerOrderSteps))
        writer.history(history)
        return writer.bytes
    }

    func restoreState(_ bytes: [UInt8]) throws {
        var reader = try StateReader(bytes, version: 1)
        try reader.plan(steps)
        let lower = Int(try reader.integer(UInt32.self))
        let restored = try reader.history()
        try reader.finish()
        guard lower <= order, restored.count <= order else { throw PluginError("sampler state is for a higher solver_order") }
        (lowerOrderSteps, history) = (lower, restored)
    }
}

nonisolated(unsafe) let dpmSolverSampler = samplerDescriptor(
    name: "dpmsolver++", summary: "DPM-Solver++ multistep (Lu et al. 2022), orders 1–3, ODE or SDE; diffusers' DPMSolverMultistepScheduler",
    classes: ["DPMSolverMultistepScheduler"]
) { host, options, levels, error, errorSize in
    makeSampler(error, errorSize) {
        try DPMSolverInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
    }
}
