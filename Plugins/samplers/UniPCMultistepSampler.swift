/// `unipc`: UniPC, a unified predictor–corrector multistep solver (Zhao et
/// al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
/// Diffusion Models", 2023): each step corrects the last one with the new model
/// output (UniC, eq. 6) and predicts the next (UniP, eq. 5), one evaluation a step.
///
/// Matches diffusers' `UniPCMultistepScheduler` with its config names and
/// defaults: `solver_type` (bh1, bh2), `solver_order` (1–3, default 2),
/// `predict_x0`, `lower_order_final`, `disable_corrector`, `use_karras_sigmas`
/// with `sigma_min`/`sigma_max`, `final_sigmas_type`, `timestep_spacing`
/// (default linspace), `steps_offset`, `prediction_type`, `thresholding`.
/// Limitations: `solver_p`, flow σ and exponential/beta σ are refused.
import DiffusionPluginKit
import Foundation

final class UniPCInstance: SamplerInstance {
    let host: UnsafePointer<dfn_host>
    let sigmaOptions: MultistepSigmaPlan.Options
    let settings: SamplerSettings
    let schedule: SigmaSchedule
    let order: Int
    let bh2: Bool
    let predictOriginal: Bool
    let lowerOrderFinal: Bool
    let disabledCorrector: Set<Int>
    var plan: MultistepSigmaPlan?
    /// Converted outputs of the last `order` steps (oldest first), the sample the
    /// last prediction started from, that prediction's order, and the lower-order count.
    var history: [[Float]] = []
    var lastSample: [Float] = []
    var lastOrder = 0
    var lowerOrderSteps = 0

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options, features: [.thresholding], spacing: .linspace)
        sigmaOptions = try MultistepSigmaPlan.Options(options, karrasBounds: true)
        schedule = SigmaSchedule(alphasCumprod: Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps))))
        order = try options.integer("solver_order", default: 2)
        guard (1...3).contains(order) else { throw PluginError("solver_order must be 1, 2 or 3, not \(order)") }
        bh2 = try options.choice("solver_type", default: "bh2", allowed: ["bh1", "bh2"]) == "bh2"
        predictOriginal = try options.bool("predict_x0", default: true)
        lowerOrderFinal = try options.bool("lower_order_final", default: true)
        disabledCorrector = Set(try options.numbers("disable_corrector").map { Int($0) })
    }

    var steps: Int { plan?.timesteps.count ?? 0 }

    func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        let plan = try MultistepSigmaPlan(steps: steps, schedule: schedule, settings: settings, options: sigmaOptions,
                                          roundsKarras: true, karrasFinal: true)
        // ε-space UniP's last step is σ_t·(e^h − 1) with both factors at 0 and ∞ (diffusers returns NaN)
        guard predictOriginal || !plan.finalSigmaIsZero else {
            throw PluginError("predict_x0 false needs final_sigmas_type \"sigma_min\" (a zero final σ divides by zero)")
        }
        self.plan = plan
        history = []
        lastSample = []
        (lastOrder, lowerOrderSteps) = (0, 0)
        return plan.evaluations
    }

    /// The coefficients ρ of UniP (`corrector` false: R[:-1, :-1]ρ = b[:-1]) or
    /// UniC (R ρ = b), from r_k and h as diffusers' `multistep_uni_*_bh_update`.
    func coefficients(ratios: [Double], h: Double, order: Int, corrector: Bool) -> (rho: [Double], hPhi1: Double, bH: Double) {
        let hh = predictOriginal ? -h : h
        let hPhi1 = expm1(hh)
        var hPhiK = hPhi1 / hh - 1
        var factorial = 1.0
        let bH = bh2 ? expm1(hh) : hh
        let rks = ratios + [1]
        var matrix: [[Double]] = [], rhs: [Double] = []
        for i in 1...order {
            matrix.append(rks.map { pow($0, Double(i - 1)) })
            rhs.append(hPhiK * factorial / bH)
            factorial *= Double(i + 1)
            hPhiK = hPhiK / hh - 1 / factorial
        }
        if corrector {
            return (order == 1 ? [0.5] : solve(matrix, rhs), hPhi1, bH)
        }
        if ratios.isEmpty { return ([], hPhi1, bH) }
        if order == 2 { return ([0.5], hPhi1, bH) }
        return (solve(Array(matrix.dropLast().map { Array($0.dropLast()) }), Array(rhs.dropLast())), hPhi1, bH)
    }

    /// UniP from step i's x with the history (the newest is this step's), or
    /// UniC of step i − 1's prediction `x_t` with this step's output `model`.
    func update(step i: Int, from x: [Float], order: Int, correcting model: [Float]?, into out: UnsafeMutablePointer<Float>) {
        guard let plan else { return }
        let target = model == nil ? i + 1 : i, base = model == nil ? i : i - 1
        let t = plan.alphaSigmaLambda(target), s0 = plan.alphaSigmaLambda(base)
        let h = t.lambda - s0.lambda
        let m0 = history[history.count - 1]
        var ratios: [Double] = [], differences: [[Float]] = []
        for k in 1..<max(order, 1) {
            let rk = (plan.alphaSigmaLambda(base - k).lambda - s0.lambda) / h
            let mk = history[history.count - 1 - k]
            ratios.append(rk)
            differences.append((0..<m0.count).map { (mk[$0] - m0[$0]) / Float(rk) })
        }
        let (rho, hPhi1, bH) = coefficients(ratios: ratios, h: h, order: order, corrector: model != nil)
        let (scale, keep) = predictOriginal ? (t.alpha, t.sigma / s0.sigma) : (t.sigma, t.alpha / s0.alpha)
        let (fKeep, fBase, fRes) = (Float(keep), Float(scale * hPhi1), Float(scale * bH))
        let weights = rho.map(Float.init)
        for j in 0..<m0.count {
            var residual: Float = 0
            for (k, difference) in differences.enumerated() where k < weights.count { residual += weights[k] * difference[j] }
            if let model { residual += weights[weights.count - 1] * (model[j] - m0[j]) }
            // no residual term at all (order 1) adds nothing, even where B(h) is infinite at a zero final σ
            out[j] = fKeep * x[j] - fBase * m0[j] - (weights.isEmpty ? 0 : fRes * residual)
        }
    }

    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard let plan, plan.timesteps.indices.contains(index) else { throw PluginError("step \(index) before set_timesteps planned it") }
        // a fresh state may start part-way (image-to-image), as diffusers' begin_index: first order, no corrector
        guard lowerOrderSteps <= min(index, order) else { throw PluginError("step \(index) out of order: steps must run in order") }
        let count = images * size
        // 1. the model output as x̂₀ (or ε when predict_x0 is false)
        var x0 = [Float](repeating: 0, count: count), epsilon = [Float](repeating: 0, count: count)
        let alphaProduct = SigmaSchedule.alphaCumprod(sigma: plan.sigmas[index])
        for image in 0..<images {
            let offset = image * size
            x0.withUnsafeMutableBufferPointer { x0Buffer in
                epsilon.withUnsafeMutableBufferPointer { epsilonBuffer in
                    settings.predict(host: host, alphaProduct: alphaProduct, modelOutput: output + offset, sample: sample + offset,
                                     count: size, original: x0Buffer.baseAddress! + offset, epsilon: epsilonBuffer.baseAddress! + offset)
                }
            }
        }
        if settings.thresholding && !predictOriginal {
            let (a, b) = (Float(alphaProduct.squareRoot()), Float((1 - alphaProduct).squareRoot()))
            for i in 0..<count { epsilon[i] = (sample[i] - a * x0[i]) / b }
        }
        original?.update(from: x0, count: count)
        let converted = predictOriginal ? x0 : epsilon
        // 2. UniC: correct this sample with the new output
        var x = Array(UnsafeBufferPointer(start: sample, count: count))
        if index > 0, !disabledCorrector.contains(index - 1), lastSample.count == count {
            update(step: index, from: lastSample, order: lastOrder, correcting: converted, into: &x)
        }
        history.append(converted)
        if history.count > order { history.removeFirst() }
        // 3. UniP: predict the next sample
        let planned = lowerOrderFinal ? min(order, plan.timesteps.count - index) : order
        lastOrder = min(planned, lowerOrderSteps + 1)
        lastSample = x
        update(step: index, from: x, order: lastOrder, correcting: nil, into: previous)
        if lowerOrderSteps < order { lowerOrderSteps += 1 }
    }

    /// Version 1: the steps, the last order, the lower-order count, the last
    /// sample, then the history.
    func saveState() -> [UInt8] {
        var writer = StateWriter(version: 1)
        writer.integer(UInt32(steps))
        writer.integer(UInt32(lastOrder))
        writer.integer(UInt32(lowerOrderSteps))
        writer.floats(lastSample)
        writer.history(history)
        return writer.bytes
    }

    func restoreState(_ bytes: [UInt8]) throws {
        var reader = try StateReader(bytes, version: 1)
        try reader.plan(steps)
        let (last, lower) = (Int(try reader.integer(UInt32.self)), Int(try reader.integer(UInt32.self)))
        let (sample, restored) = (try reader.floats(), try reader.history())
        try reader.finish()
        guard last <= order, lower <= order, restored.count <= order else { throw PluginError("sampler state is for a higher solver_order") }
        (lastOrder, lowerOrderSteps, lastSample, history) = (last, lower, sample, restored)
    }
}

/// Solves the small system A·x = b by Gaussian elimination with partial pivoting.
func solve(_ a: [[Double]], _ b: [Double]) -> [Double] {
    var m = a, v = b
    let n = v.count
    for column in 0..<n {
        let pivot = (column..<n).max { abs(m[$0][column]) < abs(m[$1][column]) }!
        m.swapAt(column, pivot)
        v.swapAt(column, pivot)
        for row in (column + 1)..<n {
            let factor = m[row][column] / m[column][column]
            for k in column..<n { m[row][k] -= factor * m[column][k] }
            v[row] -= factor * v[column]
        }
    }
    var x = [Double](repeating: 0, count: n)
    for row in (0..<n).reversed() {
        x[row] = (v[row] - ((row + 1)..<n).reduce(0) { $0 + m[row][$1] * x[$1] }) / m[row][row]
    }
    return x
}

nonisolated(unsafe) let uniPCSampler = samplerDescriptor(
    name: "unipc", summary: "UniPC predictor–corrector multistep (Zhao et al. 2023), bh1/bh2; diffusers' UniPCMultistepScheduler",
    classes: ["UniPCMultistepScheduler"]
) { host, options, levels, error, errorSize in
    makeSampler(error, errorSize) {
        try UniPCInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
    }
}
