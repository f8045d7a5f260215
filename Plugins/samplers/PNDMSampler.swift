/// `pndm`: pseudo numerical methods for diffusion models (Liu et al., ICLR
/// 2022): three Runge–Kutta steps of four evaluations each (PRK, eq. 13) warm up
/// a linear multistep method (PLMS, eq. 12) on the pseudo update of eq. 11;
/// with `skip_prk_steps` the first PLMS step is a two-evaluation Heun step.
/// n steps take n + 9 evaluations, or n + 1 without PRK.
///
/// Matches diffusers' `PNDMScheduler` with its config names and defaults:
/// `skip_prk_steps` (false), `set_alpha_to_one` (false), `prediction_type`
/// (epsilon, v_prediction), `timestep_spacing` (leading), `steps_offset`.
/// Stable Diffusion 1.x names it with skip_prk_steps true. Limitation: PRK
/// needs at least 4 steps, PLMS alone at least 2 (diffusers' own bounds).
import DiffusionPluginKit

final class PNDMInstance: SamplerInstance {
    let host: UnsafePointer<dfn_host>
    let settings: SamplerSettings
    let alphasCumprod: [Double]
    let finalAlphaCumprod: Double
    let skipPRK: Bool
    var timesteps: [Int] = []
    var stepRatio = 0
    var prkCount = 0
    /// The PLMS history of ε (oldest first), the running RK sum, the sample a
    /// four- (or two-) evaluation step started from.
    var history: [[Float]] = []
    var runningOutput: [Float] = []
    var startSample: [Float] = []

    init(host: UnsafePointer<dfn_host>, options: PluginOptions, levels: dfn_noise_levels) throws {
        self.host = host
        settings = try SamplerSettings(options, features: [], spacing: .leading, predictions: [.epsilon, .vPrediction])
        alphasCumprod = Array(UnsafeBufferPointer(start: levels.alphas_cumprod, count: Int(levels.train_steps)))
        finalAlphaCumprod = try options.bool("set_alpha_to_one", default: false) ? 1 : alphasCumprod[0]
        skipPRK = try options.bool("skip_prk_steps", default: false)
    }

    /// diffusers' order: PRK's evaluations at t, t − r/2, t − r/2, t − r for the
    /// three largest steps, then PLMS at each remaining one.
    func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        guard steps >= (skipPRK ? 2 : 4) else {
            throw PluginError("pndm needs at least \(skipPRK ? 2 : 4) steps\(skipPRK ? "" : " (or skip_prk_steps)"), not \(steps)")
        }
        let ascending = try settings.timesteps(steps: steps, trainSteps: alphasCumprod.count).reversed().map(Int.init)
        stepRatio = alphasCumprod.count / steps
        var plan: [(step: Int, t: Int)] = []
        if skipPRK {
            // _timesteps[:-1], _timesteps[-2], _timesteps[-1], descending
            let prefix = Array(ascending.dropLast()) + [ascending[ascending.count - 2], ascending.last!]
            plan = prefix.reversed().enumerated().map { index, t in (max(index - 1, 0), t) }
            prkCount = 0
        } else {
            let last4 = ascending.suffix(4)
            var prk: [Int] = []
            for t in last4 { prk += [t, t + stepRatio / 2] }
            prk = Array(prk.dropLast().flatMap { [$0, $0] }.dropFirst().dropLast().reversed())
            let plms = ascending.dropLast(3).reversed()
            plan = prk.enumerated().map { ($0 / 4, $1) } + plms.enumerated().map { (3 + $0, $1) }
            prkCount = prk.count
        }
        timesteps = plan.map(\.t)
        history = []
        runningOutput = []
        startSample = []
        return plan.map { Evaluation(step: $0.step, time: Double($0.t), alphaCumprod: alphasCumprod[$0.t]) }
    }

    /// Eq. 11, the pseudo-improved DDIM update from t to t_prev with ε:
    /// x_prev = √(ᾱ_prev/ᾱ_t)·x − (ᾱ_prev − ᾱ_t)·ε / (ᾱ_t√(1−ᾱ_prev) + √(ᾱ_t(1−ᾱ_t)ᾱ_prev)).
    func transfer(_ x: [Float], from t: Int, to previous: Int, epsilon: [Float], into out: UnsafeMutablePointer<Float>) {
        let alpha = alphasCumprod[t]
        let alphaPrev = previous >= 0 ? alphasCumprod[previous] : finalAlphaCumprod
        let sampleCoefficient = Float((alphaPrev / alpha).squareRoot())
        let denominator = alpha * (1 - alphaPrev).squareRoot() + (alpha * (1 - alpha) * alphaPrev).squareRoot()
        let outputCoefficient = Float((alphaPrev - alpha) / denominator)
        let (a, b) = (Float(alpha.squareRoot()), Float((1 - alpha).squareRoot()))
        for i in 0..<x.count {
            // v-prediction becomes ε at t first
            let e = settings.predictionType == .vPrediction ? a * epsilon[i] + b * x[i] : epsilon[i]
            out[i] = sampleCoefficient * x[i] - outputCoefficient * e
        }
    }

    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    {
        guard timesteps.indices.contains(index) else { throw PluginError("evaluation \(index) before set_timesteps planned it") }
        // every evaluation after the first reads what earlier ones left
        guard index == 0 || !(history.isEmpty && startSample.isEmpty && runningOutput.isEmpty) else {
            throw PluginError("pndm cannot start part-way through its schedule (image-to-image): give another sampler, e.g. \"sampler\": \"ddim\"")
        }
        let count = images * size
        let model = Array(UnsafeBufferPointer(start: output, count: count))
        let x = Array(UnsafeBufferPointer(start: sample, count: count))
        var t = timesteps[index]
        if index < prkCount {
            // PRK (step_prk): k1..k4 weighted 1/6, 1/3, 1/3, 1/6, each from the step's start
            let stage = index % 4
            let previousT = t - (index % 2 == 1 ? 0 : stepRatio / 2)
            t = timesteps[index / 4 * 4]
            var epsilon = model
            switch stage {
            case 0:
                runningOutput = model.map { $0 / 6 }
                history.append(model)
                startSample = x
            case 1, 2:
                for i in 0..<count { runningOutput[i] += model[i] / 3 }
            default:
                for i in 0..<count { epsilon[i] = runningOutput[i] + model[i] / 6 }
                runningOutput = []
            }
            transfer(startSample.count == count ? startSample : x, from: t, to: previousT, epsilon: epsilon, into: previous)
        } else {
            // PLMS (step_plms): Adams–Bashforth on the ε history
            // diffusers' counter counts every evaluation, so index 1 is the skip_prk Heun half
            var previousT = t - stepRatio
            if index != 1 {
                history = Array(history.suffix(3)) + [model]
            } else {
                previousT = t
                t += stepRatio
            }
            var epsilon = model
            var from = x
            let e = history
            switch e.count {
            case 1 where index == 0:
                startSample = x
            case 1:
                epsilon = (0..<count).map { (model[$0] + e[0][$0]) / 2 }
                from = startSample
                startSample = []
            case 2:
                epsilon = (0..<count).map { (3 * e[1][$0] - e[0][$0]) / 2 }
            case 3:
                epsilon = (0..<count).map { (23 * e[2][$0] - 16 * e[1][$0] + 5 * e[0][$0]) / 12 }
            default:
                epsilon = (0..<count).map { (55 * e[3][$0] - 59 * e[2][$0] + 37 * e[1][$0] - 9 * e[0][$0]) / 24 }
            }
            transfer(from, from: t, to: previousT, epsilon: epsilon, into: previous)
        }
        // x̂₀ at the evaluated timestep, for previews
        if let original {
            let alpha = alphasCumprod[timesteps[index]]
            let (a, b) = (Float(alpha.squareRoot()), Float((1 - alpha).squareRoot()))
            for i in 0..<count {
                original[i] = settings.predictionType == .vPrediction ? a * x[i] - b * model[i] : (x[i] - b * model[i]) / a
            }
        }
    }

    /// Version 1: the evaluations planned, the ε history, the RK sum, the start sample.
    func saveState() -> [UInt8] {
        var writer = StateWriter(version: 1)
        writer.integer(UInt32(timesteps.count))
        writer.history(history)
        writer.floats(runningOutput)
        writer.floats(startSample)
        return writer.bytes
    }

    func restoreState(_ bytes: [UInt8]) throws {
        var reader = try StateReader(bytes, version: 1)
        try reader.plan(timesteps.count)
        let (restored, running, start) = (try reader.history(), try reader.floats(), try reader.floats())
        try reader.finish()
        guard restored.count <= 4 else { throw PluginError("sampler state keeps \(restored.count) outputs, more than PLMS uses") }
        (history, runningOutput, startSample) = (restored, running, start)
    }
}

nonisolated(unsafe) let pndmSampler = samplerDescriptor(
    name: "pndm", summary: "PNDM (Liu et al. 2022): PRK warm-up then PLMS; diffusers' PNDMScheduler",
    classes: ["PNDMScheduler"]
) { host, options, levels, error, errorSize in
    makeSampler(error, errorSize) {
        try PNDMInstance(host: host!, options: PluginOptions(host: host!, options: options), levels: levels!.pointee)
    }
}
