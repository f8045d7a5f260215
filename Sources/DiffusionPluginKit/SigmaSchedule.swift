import Foundation

/// What diffusers' σ-space schedulers (Euler, Heun, LMS, DPM-Solver, UniPC)
/// share: σ_t = √((1−ᾱ_t)/ᾱ_t) of the training noise levels, the inference
/// timesteps of each spacing, σ at fractional timesteps, Karras et al.'s σ
/// ramp, and σ's way back to a timestep. All in double; diffusers keeps σ in
/// float32, which the fixtures' tolerances absorb.
public struct SigmaSchedule: Sendable {
    /// σ of every training timestep, t = 0 ... T−1 (ascending).
    public let trainSigmas: [Double]
    let logSigmas: [Double]

    public init(alphasCumprod: [Double]) {
        trainSigmas = alphasCumprod.map { ((1 - $0) / $0).squareRoot() }
        logSigmas = trainSigmas.map { log($0) }
    }

    public var trainSteps: Int { trainSigmas.count }

    /// How a scheduler family spaces its timesteps.
    public enum Family: Sendable {
        /// Euler, Heun, LMS: `linspace` keeps fractional timesteps.
        case discrete
        /// DPM-Solver, UniPC: n+1 points rounded, the last dropped (whole timesteps).
        case multistep
    }

    /// The `steps` timesteps of `spacing` (descending), as `family` computes them.
    /// `last` is one past the largest timestep the multistep family may pick
    /// (diffusers' `lambda_min_clipped` lowers it).
    public func timesteps(steps: Int, spacing: SamplerSettings.Spacing, stepsOffset: Int, family: Family,
                          last: Int? = nil) throws -> [Double] {
        let trainSteps = self.trainSteps
        let last = last ?? trainSteps
        guard steps >= 1, steps <= trainSteps else {
            throw PluginError("steps must be between 1 and num_train_timesteps (\(trainSteps)), not \(steps)")
        }
        let result: [Double]
        switch (spacing, family) {
        case (.linspace, .discrete):
            // np.linspace(0, T − 1, n)[::-1], in float32 as diffusers keeps it
            result = (0..<steps).reversed().map { i in
                steps == 1 ? 0 : Double(Float(Double(i) * Double(trainSteps - 1) / Double(steps - 1)))
            }
        case (.linspace, .multistep):
            // np.linspace(0, T − 1, n + 1).round()[::-1][:-1]
            result = (1...steps).reversed().map { i in
                (Double(i) * Double(last - 1) / Double(steps)).rounded(.toNearestOrEven)
            }
        case (.leading, .discrete):
            let ratio = trainSteps / steps
            result = (0..<steps).reversed().map { Double($0 * ratio + stepsOffset) }
        case (.leading, .multistep):
            let ratio = last / (steps + 1)
            result = (1...steps).reversed().map { Double($0 * ratio + stepsOffset) }
        case (.trailing, _):
            // np.arange(last, 0, −T/n).round() − 1
            let ratio = Double(trainSteps) / Double(steps)
            let count = Int((Double(last) / ratio).rounded(.up))  // numpy's length: ceil((stop − start)/step)
            result = (0..<count).map { (Double(last) - Double($0) * ratio).rounded(.toNearestOrEven) - 1 }
        }
        guard result.count == steps else {
            throw PluginError("\(steps) steps leave \(result.count) timesteps below \(last) (lower steps or lambda_min_clipped)")
        }
        if let bad = result.first(where: { $0 < 0 || $0 > Double(trainSteps - 1) }) {
            throw PluginError("timestep \(bad) falls outside 0..<\(trainSteps) (check steps_offset)")
        }
        return result
    }

    /// σ at a fractional timestep, interpolated linearly (np.interp).
    public func sigma(at t: Double) -> Double {
        let low = min(max(Int(t.rounded(.down)), 0), trainSteps - 1)
        let high = min(low + 1, trainSteps - 1)
        let w = t - Double(low)
        return trainSigmas[low] + w * (trainSigmas[high] - trainSigmas[low])
    }

    /// Karras et al. (2022), eq. 5 with ρ = 7: n σ from σ_max down to σ_min.
    public static func karras(sigmaMin: Double, sigmaMax: Double, steps: Int) -> [Double] {
        let rho = 7.0
        let (minInverse, maxInverse) = (pow(sigmaMin, 1 / rho), pow(sigmaMax, 1 / rho))
        return (0..<steps).map { i in
            let ramp = steps == 1 ? 0 : Double(i) / Double(steps - 1)
            return pow(maxInverse + ramp * (minInverse - maxInverse), rho)
        }
    }

    /// The fractional timestep of σ: log σ interpolated between the training
    /// timesteps around it (diffusers' `_sigma_to_t`).
    public func timestep(ofSigma sigma: Double) -> Double {
        let logSigma = log(max(sigma, 1e-10))
        // the last index whose log σ is ≤ this one, clipped to T − 2
        var low = 0
        for (i, value) in logSigmas.enumerated() where logSigma - value >= 0 { low = i }
        low = min(low, trainSteps - 2)
        let (a, b) = (logSigmas[low], logSigmas[low + 1])
        let w = min(max((a - logSigma) / (a - b), 0), 1)
        return (1 - w) * Double(low) + w * Double(low + 1)
    }

    /// ᾱ of the noise at σ (x = x₀ + σ·ε scaled by 1/√(1+σ²)).
    public static func alphaCumprod(sigma: Double) -> Double { 1 / (1 + sigma * sigma) }
}

/// Refuses a diffusers scheduler option this sampler does not implement when a
/// config turns it on, so a model never renders differently from diffusers in silence.
public func refuseUnsupported(_ options: PluginOptions, _ keys: [String]) throws {
    for key in keys where try options.bool(key, default: false) {
        throw PluginError("\(key) is not supported by this sampler; remove it from the scheduler config or sampler_options")
    }
}

/// x̂₀ of one value in σ space (Euler, Heun, LMS): ε-prediction x − σ·m,
/// v-prediction m·(−σ/√(σ²+1)) + x/(σ²+1), sample prediction m.
@inline(__always)
public func originalInSigmaSpace(_ prediction: SamplerSettings.Prediction, sigma: Double, sample x: Float, output m: Float) -> Float {
    switch prediction {
    case .epsilon: return x - Float(sigma) * m
    case .vPrediction: return m * Float(-sigma / (sigma * sigma + 1).squareRoot()) + x / Float(sigma * sigma + 1)
    case .sample: return m
    }
}

/// The σ plan of diffusers' discrete σ schedulers (Euler, Euler ancestral,
/// Heun, LMS): timesteps of the spacing, σ interpolated at them (or Karras σ and
/// their timesteps), then the final σ. Each class reads only the keys it has.
public struct DiscreteSigmaPlan: Sendable {
    public struct Keys: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        public static let karras = Keys(rawValue: 1)         // use_karras_sigmas
        public static let interpolation = Keys(rawValue: 2)  // interpolation_type
        public static let finalSigmas = Keys(rawValue: 4)    // final_sigmas_type
        public static let sigmaBounds = Keys(rawValue: 8)    // sigma_min, sigma_max (Karras' ends)
        public static let continuous = Keys(rawValue: 16)    // timestep_type
    }

    /// The keys of `Keys` as one class reads them, at create.
    public struct Options: Sendable {
        var karras = false, logLinear = false, finalSigmaMin = false, continuous = false
        var bounds: (min: Double?, max: Double?) = (nil, nil)

        public init(_ options: PluginOptions, keys: Keys) throws {
            try refuseUnsupported(options, ["use_exponential_sigmas", "use_beta_sigmas", "rescale_betas_zero_snr"])
            if keys.contains(.karras) { karras = try options.bool("use_karras_sigmas", default: false) }
            if keys.contains(.interpolation) {
                logLinear = try options.choice("interpolation_type", default: "linear", allowed: ["linear", "log_linear"]) == "log_linear"
            }
            if keys.contains(.finalSigmas) {
                finalSigmaMin = try options.choice("final_sigmas_type", default: "zero", allowed: ["zero", "sigma_min"]) == "sigma_min"
            }
            if keys.contains(.sigmaBounds) { bounds = (try options.optionalNumber("sigma_min"), try options.optionalNumber("sigma_max")) }
            if keys.contains(.continuous) {
                continuous = try options.choice("timestep_type", default: "discrete", allowed: ["discrete", "continuous"]) == "continuous"
            }
        }
    }

    public let timesteps: [Double]
    /// σ of each step, then the σ the last step ends at.
    public let sigmas: [Double]
    public let initNoiseSigma: Double

    public init(steps: Int, schedule: SigmaSchedule, settings: SamplerSettings, options: Options) throws {
        var timesteps = try schedule.timesteps(steps: steps, spacing: settings.timestepSpacing,
                                               stepsOffset: settings.stepsOffset, family: .discrete)
        var sigmas: [Double]
        if options.logLinear {
            // diffusers: exp(linspace(log σ_max, log σ_min, n + 1)), all n + 1 used
            let (high, low) = (log(schedule.trainSigmas.last!), log(schedule.trainSigmas[0]))
            sigmas = (0...steps).map { exp(high + (low - high) * Double($0) / Double(steps)) }
        } else {
            sigmas = timesteps.map(schedule.sigma(at:))
        }
        if options.karras {
            sigmas = SigmaSchedule.karras(sigmaMin: options.bounds.min ?? sigmas.last!, sigmaMax: options.bounds.max ?? sigmas[0],
                                          steps: steps)
            timesteps = sigmas.map(schedule.timestep(ofSigma:))
        }
        sigmas.append(options.finalSigmaMin ? schedule.trainSigmas[0] : 0)
        // continuous v-prediction models take 0.25·log σ as their time
        if options.continuous && settings.predictionType == .vPrediction { timesteps = sigmas.dropLast().map { 0.25 * log($0) } }
        self.timesteps = timesteps
        self.sigmas = sigmas
        let largest = sigmas.max()!
        initNoiseSigma = settings.timestepSpacing == .leading ? (largest * largest + 1).squareRoot() : largest
    }

    /// Evaluation i at σ_i: the model sees x/√(σ²+1), whose ᾱ is 1/(1+σ²).
    public func evaluation(_ i: Int, step: Int) -> Evaluation {
        let sigma = sigmas[i]
        return Evaluation(step: step, time: timesteps[i], alphaCumprod: SigmaSchedule.alphaCumprod(sigma: sigma),
                          inputScale: 1 / (sigma * sigma + 1).squareRoot())
    }
}

/// The σ plan of diffusers' multistep solvers (DPM-Solver, UniPC): whole
/// timesteps of the spacing and σ interpolated at them, or Karras σ and their
/// (rounded) timesteps; then the final σ. The model sees x unscaled.
public struct MultistepSigmaPlan: Sendable {
    /// The keys of one class, read at create. `karrasBounds`: the class's
    /// sigma_min/sigma_max keys.
    public struct Options: Sendable {
        var karras = false, finalSigmaMin = false
        var bounds: (min: Double?, max: Double?) = (nil, nil)

        public init(_ options: PluginOptions, karrasBounds: Bool) throws {
            try refuseUnsupported(options, ["use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas",
                                            "rescale_betas_zero_snr", "use_dynamic_shifting"])
            karras = try options.bool("use_karras_sigmas", default: false)
            finalSigmaMin = try options.choice("final_sigmas_type", default: "zero", allowed: ["zero", "sigma_min"]) == "sigma_min"
            if karrasBounds { bounds = (try options.optionalNumber("sigma_min"), try options.optionalNumber("sigma_max")) }
        }
    }

    public let timesteps: [Double]
    /// σ of each step, then the σ the last step ends at.
    public let sigmas: [Double]
    public let finalSigmaIsZero: Bool

    /// `roundsKarras`: whether Karras timesteps are rounded (DPM-Solver leaves
    /// them fractional for squaredcos_cap_v2, then truncates); `karrasFinal`:
    /// sigma_min ends at the last Karras σ (UniPC) rather than the training σ_0.
    public init(steps: Int, schedule: SigmaSchedule, settings: SamplerSettings, options: Options,
                roundsKarras: Bool, karrasFinal: Bool, last: Int? = nil) throws {
        var timesteps = try schedule.timesteps(steps: steps, spacing: settings.timestepSpacing,
                                               stepsOffset: settings.stepsOffset, family: .multistep, last: last)
        var sigmas: [Double]
        if options.karras {
            sigmas = SigmaSchedule.karras(sigmaMin: options.bounds.min ?? schedule.trainSigmas[0],
                                          sigmaMax: options.bounds.max ?? schedule.trainSigmas.last!, steps: steps)
            // to int64 as diffusers stores them: rounded, or truncated toward zero
            timesteps = sigmas.map { sigma in
                let t = schedule.timestep(ofSigma: sigma)
                return (roundsKarras ? t.rounded(.toNearestOrEven) : t).rounded(.towardZero)
            }
            sigmas.append(options.finalSigmaMin ? (karrasFinal ? sigmas.last! : schedule.trainSigmas[0]) : 0)
        } else {
            sigmas = timesteps.map(schedule.sigma(at:))
            sigmas.append(options.finalSigmaMin ? schedule.trainSigmas[0] : 0)
        }
        self.timesteps = timesteps
        self.sigmas = sigmas
        finalSigmaIsZero = !options.finalSigmaMin
    }

    public var evaluations: [Evaluation] {
        timesteps.indices.map { Evaluation(step: $0, time: timesteps[$0], alphaCumprod: SigmaSchedule.alphaCumprod(sigma: sigmas[$0])) }
    }

    /// α_t = 1/√(σ²+1), σ_t = σ·α_t and λ = log α_t − log σ_t of step i's σ.
    public func alphaSigmaLambda(_ i: Int) -> (alpha: Double, sigma: Double, lambda: Double) {
        let alpha = 1 / (sigmas[i] * sigmas[i] + 1).squareRoot()
        let sigma = sigmas[i] * alpha
        return (alpha, sigma, log(alpha) - log(sigma))
    }
}

/// A sampler on a `DiscreteSigmaPlan` with one evaluation a step and nothing
/// kept between steps (Euler, Euler ancestral): it gets `setTimesteps`,
/// `initNoiseSigma` and its state blob for free.
public protocol DiscreteSigmaSampler: SamplerInstance {
    var settings: SamplerSettings { get }
    var schedule: SigmaSchedule { get }
    var sigmaOptions: DiscreteSigmaPlan.Options { get }
    var plan: DiscreteSigmaPlan? { get set }
}

extension DiscreteSigmaSampler {
    public func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        let plan = try DiscreteSigmaPlan(steps: steps, schedule: schedule, settings: settings, options: sigmaOptions)
        self.plan = plan
        return (0..<steps).map { plan.evaluation($0, step: $0) }
    }

    public var initNoiseSigma: Double { plan?.initNoiseSigma ?? 1 }

    public func saveState() -> [UInt8] { PlanOnlyState.encode(steps: plan?.timesteps.count ?? 0) }

    public func restoreState(_ bytes: [UInt8]) throws { try PlanOnlyState.check(bytes, steps: plan?.timesteps.count ?? 0) }
}
