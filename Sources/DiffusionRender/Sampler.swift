import DiffusionKernels
import DiffusionPluginABI
import Foundation

/// One job's instance of a sampler plugin, driven as diffusers pipelines drive
/// their schedulers: `setTimesteps` once, then for each model evaluation it
/// planned, the model on `inputScale · x` and `step`.
///
/// A 1.0 sampler is read as the 1.1 contract with one evaluation per step:
/// evaluation i is step i at timesteps[i], ᾱ from the noise levels, scale 1,
/// and x_T unit noise.
public final class Sampler: @unchecked Sendable {
    public typealias Evaluation = (step: Int, time: Double, alphaCumprod: Double, inputScale: Double, modelVariance: Bool)

    public let name: String
    private let component: PluginRegistry.Component<dfn_sampler>
    private let levels: NoiseLevels
    private let levelsStruct: UnsafeMutablePointer<dfn_noise_levels>
    private let betas: UnsafeMutablePointer<Double>
    private let alphasCumprod: UnsafeMutablePointer<Double>
    private let instance: UnsafeMutableRawPointer
    /// What set_timesteps planned: every model evaluation in order.
    public private(set) var evaluations: [Evaluation] = []
    /// x_T = initNoiseSigma · unit noise (diffusers' init_noise_sigma).
    public private(set) var initNoiseSigma = 1.0

    public init(name: String, registry: PluginRegistry, options: ComponentOptions, levels: NoiseLevels) throws {
        guard let component = registry.samplers[name] else {
            let known = registry.samplers.keys.sorted().joined(separator: ", ")
            throw DiffusionError("sampler \"\(name)\" is not provided by any plugin (available: \(known))")
        }
        self.name = name
        self.component = component
        self.levels = levels
        betas = .allocate(capacity: levels.trainSteps)
        betas.initialize(from: levels.betas, count: levels.trainSteps)
        alphasCumprod = .allocate(capacity: levels.trainSteps)
        alphasCumprod.initialize(from: levels.alphasCumprod, count: levels.trainSteps)
        levelsStruct = .allocate(capacity: 1)
        levelsStruct.initialize(to: dfn_noise_levels(
            abi_version: PluginHost.abiVersion, size: UInt32(MemoryLayout<dfn_noise_levels>.size),
            train_steps: Int32(levels.trainSteps), betas: betas, alphas_cumprod: alphasCumprod))
        var made: UnsafeMutableRawPointer?
        let noiseLevels = levelsStruct
        do {
            try pluginCall("sampler \(name)") { error, size in
                made = component.descriptor.pointee.create(PluginHost.table, options.handle, noiseLevels, error, size)
                return made != nil
            }
        } catch {
            levelsStruct.deallocate()
            betas.deallocate()
            alphasCumprod.deallocate()
            throw error
        }
        instance = made!
    }

    deinit {
        component.descriptor.pointee.destroy(instance)
        levelsStruct.deallocate()
        betas.deallocate()
        alphasCumprod.deallocate()
    }

    /// Whether the plugin speaks 1.1: it describes its evaluations itself.
    private var describes: Bool { component.minor >= 1 }

    /// Plans `steps` steps of at most `maxEvaluations` model evaluations;
    /// returns the (rounded) timestep of every evaluation.
    @discardableResult
    public func setTimesteps(_ steps: Int, maxEvaluations: Int = RenderLimits().maxEvaluations) throws -> [Int32] {
        let descriptor = component.descriptor.pointee
        var capacity = Int32(max(steps, 1))
        if describes {
            try pluginCall("sampler \(name)") { error, size in
                capacity = descriptor.set_timesteps(instance, Int32(steps), nil, 0, error, size)
                return capacity >= 0
            }
            guard Int(capacity) <= maxEvaluations else {
                throw DiffusionError("sampler \(name): \(steps) steps take \(capacity) model evaluations, over the limit of \(maxEvaluations) (20 per step of the steps limit)")
            }
        }
        var chosen = [Int32](repeating: 0, count: Int(max(capacity, 1)))
        var count: Int32 = 0
        try pluginCall("sampler \(name)") { error, size in
            count = descriptor.set_timesteps(instance, Int32(steps), &chosen, Int32(chosen.count), error, size)
            return count >= 0
        }
        let timesteps = Array(chosen.prefix(Int(count)))
        guard describes else {
            evaluations = timesteps.enumerated().map { index, t in
                (index, Double(t), (0..<levels.trainSteps).contains(Int(t)) ? levels.alphasCumprod[Int(t)] : 1, 1, false)
            }
            return timesteps
        }
        evaluations = try (0..<Int(count)).map { index in
            var evaluation = dfn_evaluation()
            evaluation.abi_version = PluginHost.abiVersion
            evaluation.size = UInt32(MemoryLayout<dfn_evaluation>.size)
            try pluginCall("sampler \(name)") { error, size in
                descriptor.describe(instance, Int32(index), &evaluation, error, size) == DFN_OK
            }
            return (Int(evaluation.step), evaluation.time, evaluation.alpha_cumprod, evaluation.input_scale,
                    evaluation.model_variance != 0)
        }
        initNoiseSigma = descriptor.init_noise_sigma(instance)
        try checkPlan(steps: steps)
        return timesteps
    }

    /// A plan the loop can drive: steps 0..<steps in order, every number finite,
    /// ᾱ in (0, 1].
    private func checkPlan(steps: Int) throws {
        var expected = 0
        for (index, e) in evaluations.enumerated() {
            if index > 0, e.step != expected { expected += 1 }
            guard e.step == expected, e.step < steps else {
                throw DiffusionError("sampler \(name): evaluation \(index) belongs to step \(e.step), out of order for \(steps) steps")
            }
            guard e.time.isFinite, e.inputScale.isFinite, e.alphaCumprod > 0, e.alphaCumprod <= 1 else {
                throw DiffusionError("sampler \(name): evaluation \(index) has time \(e.time), ᾱ \(e.alphaCumprod), input scale \(e.inputScale)")
            }
        }
        guard expected == steps - 1, initNoiseSigma.isFinite, initNoiseSigma > 0 else {
            throw DiffusionError("sampler \(name): planned \(expected + 1) of \(steps) steps with init_noise_sigma \(initNoiseSigma)")
        }
    }

    /// Consumes evaluation `index` for a batch `[images, ...]`: returns the next
    /// sample and the predicted x₀. The model output has the sample's shape, or
    /// twice its channels (the variance after it) where the evaluation reads it.
    public func step(_ index: Int, modelOutput: Tensor, sample: Tensor, generators: [ImageGenerator]) throws
        -> (previous: Tensor, predictedOriginal: Tensor)
    {
        guard evaluations.indices.contains(index) else {
            throw DiffusionError("sampler \(name): evaluation \(index) of the \(evaluations.count) set_timesteps planned")
        }
        precondition(modelOutput.count == sample.count * (evaluations[index].modelVariance ? 2 : 1),
                     "model output \(modelOutput.shape) for sample \(sample.shape)")
        let images = sample.shape[0]
        let previous = Tensor(uninitialized: sample.shape)
        let original = Tensor(uninitialized: sample.shape)
        var handles: [OpaquePointer?] = generators.map(\.handle)
        try withExtendedLifetime(generators) {
            try pluginCall("sampler \(name)") { error, size in
                component.descriptor.pointee.step(
                    instance, Int32(index), Int32(images), Int64(sample.sliceCount), modelOutput.data, sample.data,
                    previous.data, original.data, &handles, error, size) == DFN_OK
            }
        }
        return (previous, original)
    }

    public func saveState() -> [UInt8] {
        let save = component.descriptor.pointee.save_state!
        let size = save(instance, nil, 0)
        var bytes = [UInt8](repeating: 0, count: Int(max(size, 0)))
        _ = bytes.withUnsafeMutableBytes { save(instance, $0.baseAddress, Int64($0.count)) }
        return bytes
    }

    public func restoreState(_ bytes: [UInt8]) throws {
        try pluginCall("sampler \(name)") { error, size in
            bytes.withUnsafeBytes {
                component.descriptor.pointee.restore_state(instance, $0.baseAddress, Int64(bytes.count), error, size) == DFN_OK
            }
        }
    }
}
