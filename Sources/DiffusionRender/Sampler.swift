import DiffusionKernels
import DiffusionPluginABI
import Foundation

/// One job's instance of a sampler plugin, driven as diffusers pipelines drive
/// their schedulers: `setTimesteps` once, then `step` for each timestep in turn.
public final class Sampler: @unchecked Sendable {
    public let name: String
    private let component: PluginRegistry.Component<dfn_sampler>
    private let levels: NoiseLevels
    private let levelsStruct: UnsafeMutablePointer<dfn_noise_levels>
    private let betas: UnsafeMutablePointer<Double>
    private let alphasCumprod: UnsafeMutablePointer<Double>
    private let instance: UnsafeMutableRawPointer
    public private(set) var timesteps: [Int32] = []

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

    public func setTimesteps(_ steps: Int) throws -> [Int32] {
        var chosen = [Int32](repeating: 0, count: max(steps, 1))
        var count: Int32 = 0
        try pluginCall("sampler \(name)") { error, size in
            count = component.descriptor.pointee.set_timesteps(instance, Int32(steps), &chosen, Int32(chosen.count), error, size)
            return count >= 0
        }
        timesteps = Array(chosen.prefix(Int(count)))
        return timesteps
    }

    /// Step `index` for a batch `[images, ...]`: returns x_{t−1} and the predicted x₀.
    public func step(_ index: Int, modelOutput: Tensor, sample: Tensor, generators: [ImageGenerator]) throws
        -> (previous: Tensor, predictedOriginal: Tensor)
    {
        precondition(modelOutput.shape == sample.shape, "model output \(modelOutput.shape) for sample \(sample.shape)")
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
