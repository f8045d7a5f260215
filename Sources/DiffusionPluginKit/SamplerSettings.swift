/// What diffusers' schedulers share: their config keys, defaults and meanings,
/// and the arithmetic they apply to a model's output.
public struct SamplerSettings: Sendable {
    public enum Prediction: String, Sendable { case epsilon, sample, vPrediction = "v_prediction" }
    public enum Spacing: String, Sendable { case leading, trailing, linspace }

    public var predictionType = Prediction.epsilon
    public var clipSample = true
    public var clipSampleRange = 1.0
    public var thresholding = false
    public var dynamicThresholdingRatio = 0.995
    public var sampleMaxValue = 1.0
    public var timestepSpacing = Spacing.leading
    public var stepsOffset = 0

    /// The keys a diffusers scheduler class has beyond prediction_type and the spacing.
    public struct Features: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        /// clip_sample, clip_sample_range
        public static let clipping = Features(rawValue: 1)
        /// thresholding, dynamic_thresholding_ratio, sample_max_value
        public static let thresholding = Features(rawValue: 2)
    }

    /// Reads the keys of `features` (the others keep clipping and thresholding
    /// off), with `spacing` and `predictions` as the class defines them.
    public init(_ options: PluginOptions, features: Features = [.clipping, .thresholding], spacing: Spacing = .leading,
                predictions: [Prediction] = [.epsilon, .sample, .vPrediction], clipSampleDefault: Bool = true) throws
    {
        clipSample = clipSampleDefault
        predictionType = Prediction(rawValue: try options.choice(
            "prediction_type", default: "epsilon", allowed: predictions.map(\.rawValue)))!
        if features.contains(.clipping) {
            clipSample = try options.bool("clip_sample", default: clipSample)
            clipSampleRange = try options.number("clip_sample_range", default: clipSampleRange)
        } else {
            clipSample = false
        }
        if features.contains(.thresholding) {
            thresholding = try options.bool("thresholding", default: thresholding)
            dynamicThresholdingRatio = try options.number("dynamic_thresholding_ratio", default: dynamicThresholdingRatio)
            sampleMaxValue = try options.number("sample_max_value", default: sampleMaxValue)
        }
        timestepSpacing = Spacing(rawValue: try options.choice(
            "timestep_spacing", default: spacing.rawValue, allowed: ["leading", "trailing", "linspace"]))!
        stepsOffset = try options.integer("steps_offset", default: 0)
        guard (0...1).contains(dynamicThresholdingRatio) else {
            throw PluginError("dynamic_thresholding_ratio must lie in [0, 1], not \(dynamicThresholdingRatio)")
        }
    }

    /// diffusers' `set_timesteps` for `steps` of `trainSteps`, in evaluation order.
    public func timesteps(steps: Int, trainSteps: Int) throws -> [Int32] {
        guard steps >= 1, steps <= trainSteps else {
            throw PluginError("steps must be between 1 and num_train_timesteps (\(trainSteps)), not \(steps)")
        }
        let result: [Int]
        switch timestepSpacing {
        case .linspace:
            // np.linspace(0, T - 1, n).round()[::-1]
            result = (0..<steps).reversed().map { i in
                steps == 1 ? 0 : Int((Double(i) * Double(trainSteps - 1) / Double(steps - 1)).rounded(.toNearestOrEven))
            }
        case .leading:
            // (arange(n) * (T // n)).round()[::-1] + steps_offset
            let ratio = trainSteps / steps
            result = (0..<steps).reversed().map { $0 * ratio + stepsOffset }
        case .trailing:
            // round(arange(T, 0, -T / n)) - 1
            let ratio = Double(trainSteps) / Double(steps)
            result = (0..<steps).map { Int((Double(trainSteps) - Double($0) * ratio).rounded(.toNearestOrEven)) - 1 }
        }
        if let bad = result.first(where: { $0 < 0 || $0 >= trainSteps }) {
            throw PluginError("timestep \(bad) falls outside 0..<\(trainSteps) (check steps_offset)")
        }
        return result.map(Int32.init)
    }

    /// Predicted x₀ and ε of one image from the model's output at ᾱ_t (DDIM, eq. 9):
    /// ε-prediction x₀ = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t; v-prediction x₀ = √ᾱ_t·x_t − √(1−ᾱ_t)·v,
    /// ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t; sample prediction ε = (x_t − √ᾱ_t·x₀)/√(1−ᾱ_t).
    /// Then x₀ is clipped or dynamically thresholded (Saharia et al. 2022) as configured.
    public func predict(
        host: UnsafePointer<dfn_host>, alphaProduct: Double, modelOutput: UnsafePointer<Float>,
        sample: UnsafePointer<Float>, count: Int, original: UnsafeMutablePointer<Float>,
        epsilon: UnsafeMutablePointer<Float>?
    ) {
        let a = Float(alphaProduct.squareRoot()), b = Float((1 - alphaProduct).squareRoot())
        for i in 0..<count {
            let (x, m) = (sample[i], modelOutput[i])
            switch predictionType {
            case .epsilon:
                original[i] = (x - b * m) / a
                epsilon?[i] = m
            case .sample:
                original[i] = m
                epsilon?[i] = (x - a * m) / b
            case .vPrediction:
                original[i] = a * x - b * m
                epsilon?[i] = a * m + b * x
            }
        }
        if thresholding {
            // s = clamp(quantile(|x₀|, ratio), 1, sample_max_value); x₀ = clamp(x₀, −s, s)/s
            let quantile = Double(host.pointee.abs_quantile(Int64(count), original, dynamicThresholdingRatio))
            let s = Float(min(max(quantile, 1), sampleMaxValue))
            host.pointee.clamp(Int64(count), -s, s, original)
            for i in 0..<count { original[i] /= s }
        } else if clipSample {
            host.pointee.clamp(Int64(count), Float(-clipSampleRange), Float(clipSampleRange), original)
        }
    }
}

/// Adds σ·z to one image's `count` values, z drawn from that image's generator
/// into `scratch`: the noise term every stochastic sampler step ends with.
public func addNoise(host: UnsafePointer<dfn_host>, generators: UnsafePointer<OpaquePointer?>?, image: Int,
                     sigma: Double, into values: UnsafeMutablePointer<Float>, count: Int,
                     scratch: UnsafeMutablePointer<Float>) throws
{
    guard let generator = generators?[image] else { throw PluginError("this step needs a generator per image") }
    host.pointee.random_normal(generator, Int64(count), scratch)
    host.pointee.axpby(Int64(count), Float(sigma), scratch, 1, values)
}
