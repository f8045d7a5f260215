import DiffusionKernels
import DiffusionModels
import DiffusionPluginABI
import Foundation

/// One job's instance of a guidance plugin.
public final class Guidance: @unchecked Sendable {
    public let name: String
    private let component: PluginRegistry.Component<dfn_guidance>
    private let instance: UnsafeMutableRawPointer
    public let needs: UInt32

    public init(name: String, registry: PluginRegistry, options: ComponentOptions) throws {
        guard let component = registry.guidances[name] else {
            let known = registry.guidances.keys.sorted().joined(separator: ", ")
            throw DiffusionError("guidance \"\(name)\" is not provided by any plugin (available: \(known))")
        }
        self.name = name
        self.component = component
        var made: UnsafeMutableRawPointer?
        try pluginCall("guidance \(name)") { error, size in
            made = component.descriptor.pointee.create(PluginHost.table, options.handle, error, size)
            return made != nil
        }
        instance = made!
        needs = component.descriptor.pointee.needs(instance)
    }

    deinit { component.descriptor.pointee.destroy(instance) }

    /// The method's state blob (empty for a method without state).
    public func saveState() -> [UInt8] {
        guard let save = component.descriptor.pointee.save_state else { return [] }
        let size = save(instance, nil, 0)
        var bytes = [UInt8](repeating: 0, count: Int(max(size, 0)))
        _ = bytes.withUnsafeMutableBytes { save(instance, $0.baseAddress, Int64($0.count)) }
        return bytes
    }

    public func restoreState(_ bytes: [UInt8]) throws {
        guard let restore = component.descriptor.pointee.restore_state else {
            guard bytes.isEmpty else { throw DiffusionError("guidance \(name) keeps no state, but a state was given") }
            return
        }
        try pluginCall("guidance \(name)") { error, size in
            bytes.withUnsafeBytes { restore(instance, $0.baseAddress, Int64(bytes.count), error, size) == DFN_OK }
        }
    }

    public var needsConditional: Bool { needs & UInt32(DFN_NEEDS_CONDITIONAL) != 0 }
    public var needsUnconditional: Bool { needs & UInt32(DFN_NEEDS_UNCONDITIONAL) != 0 }
    public var needsClassifier: Bool { needs & UInt32(DFN_NEEDS_CLASSIFIER) != 0 }

    /// The guided model output of one step.
    func combine(sample: Tensor, conditional: Tensor?, unconditional: Tensor?, labels: [Int32], timestep: Int,
                 alphaCumprod: Double, classifier: ClassifierContext?) throws -> Tensor
    {
        let guided = Tensor(uninitialized: sample.shape)
        var inputs = dfn_guidance_inputs(
            abi_version: PluginHost.abiVersion, size: UInt32(MemoryLayout<dfn_guidance_inputs>.size),
            images: Int32(sample.shape[0]), image_size: Int64(sample.sliceCount), timestep: Int32(timestep),
            alpha_cumprod: alphaCumprod, sample: sample.data, conditional: conditional?.data,
            unconditional: unconditional?.data, labels: nil,
            classifier: classifier.map { Unmanaged.passUnretained($0).toOpaque() })
        try labels.withUnsafeBufferPointer { labelPointer in
            inputs.labels = labelPointer.baseAddress
            try withExtendedLifetime((conditional, unconditional, classifier)) {
                try pluginCall("guidance \(name)") { error, size in
                    component.descriptor.pointee.combine(instance, &inputs, guided.data, error, size) == DFN_OK
                }
            }
        }
        return guided
    }
}

/// What `host->classifier_gradient` reaches: a model's noisy classifier at the
/// noise levels of the running job.
final class ClassifierContext {
    let classifier: any NoisyClassifier
    let runtime: KernelRuntime
    let alphasCumprod: [Double]
    let sampleShape: [Int]

    init(classifier: any NoisyClassifier, runtime: KernelRuntime, alphasCumprod: [Double], sampleShape: [Int]) {
        self.classifier = classifier
        self.runtime = runtime
        self.alphasCumprod = alphasCumprod
        self.sampleShape = sampleShape
    }

    func gradient(images: Int, imageSize: Int, sample: UnsafePointer<Float>, timestep: Int, labels: UnsafePointer<Int32>,
                  into gradient: UnsafeMutablePointer<Float>) throws
    {
        guard imageSize == sampleShape.reduce(1, *), alphasCumprod.indices.contains(timestep) else {
            throw DiffusionError("classifier gradient asked for \(imageSize) values at timestep \(timestep)")
        }
        let x = Tensor(uninitialized: [images] + sampleShape)
        x.data.update(from: sample, count: images * imageSize)
        let result = try classifier.logProbabilityGradient(
            x, timesteps: [Float](repeating: Float(timestep), count: images),
            alphasCumprod: [Double](repeating: alphasCumprod[timestep], count: images),
            labels: (0..<images).map { Int(labels[$0]) }, on: runtime)
        gradient.update(from: result.data, count: images * imageSize)
    }
}
