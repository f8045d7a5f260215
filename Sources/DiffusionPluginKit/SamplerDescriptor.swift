/// The C side of a Swift sampler: a sampler implements `SamplerInstance`, and
/// `samplerDescriptor` builds its `dfn_sampler` with shared entry points, so a
/// sampler file holds only its arithmetic and its `create` function.
public protocol SamplerInstance: AnyObject {
    /// diffusers' `set_timesteps`: every model evaluation of `steps` steps, in order.
    func setTimesteps(_ steps: Int) throws -> [Evaluation]
    /// diffusers' `init_noise_sigma` once the timesteps are set (1 unless it says otherwise).
    var initNoiseSigma: Double { get }
    /// Consumes evaluation `index`: the model's (guided) output for `sample`, into `previous`.
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    /// The state a resumed job needs, and its restoration.
    func saveState() -> [UInt8]
    func restoreState(_ bytes: [UInt8]) throws
}

extension SamplerInstance {
    public var initNoiseSigma: Double { 1 }
}

/// One model evaluation (`dfn_evaluation`): the step it belongs to, the model's
/// time input, ᾱ of the noise in the model's input, and diffusers'
/// `scale_model_input` factor.
public struct Evaluation: Equatable, Sendable {
    public var step: Int
    public var time: Double
    public var alphaCumprod: Double
    public var inputScale: Double
    /// Whether `step` reads the model's predicted variance after its output.
    public var modelVariance: Bool

    public init(step: Int, time: Double, alphaCumprod: Double, inputScale: Double = 1, modelVariance: Bool = false) {
        self.step = step
        self.time = time
        self.alphaCumprod = alphaCumprod
        self.inputScale = inputScale
        self.modelVariance = modelVariance
    }
}

/// `create`'s body: makes the instance, or reports why not.
public func makeSampler(_ error: UnsafeMutablePointer<CChar>?, _ errorSize: Int,
                        _ make: () throws -> any SamplerInstance) -> UnsafeMutableRawPointer?
{
    var made: UnsafeMutableRawPointer?
    _ = reporting(error, errorSize) { made = Unmanaged.passRetained(SamplerBox(try make())).toOpaque() }
    return made
}

public typealias SamplerCreate = @convention(c) (
    UnsafePointer<dfn_host>?, OpaquePointer?, UnsafePointer<dfn_noise_levels>?, UnsafeMutablePointer<CChar>?, Int
) -> UnsafeMutableRawPointer?

/// A sampler's descriptor; `classes` are the diffusers scheduler classes it implements.
public func samplerDescriptor(name: String, summary: String, classes: [String] = [],
                              create: SamplerCreate) -> UnsafePointer<dfn_sampler>
{
    permanent(dfn_sampler(
        abi_version: pluginABIVersion,  // the header this file was built against
        size: UInt32(MemoryLayout<dfn_sampler>.size),  // fields this build has
        name: permanentCString(name),  // the `sampler` value of a job
        summary: permanentCString(summary),  // one line for listings
        create: create,  // one instance per job, via makeSampler
        destroy: { Unmanaged<SamplerBox>.fromOpaque($0!).release() },  // ends the job's instance
        set_timesteps: { pointer, steps, timesteps, capacity, error, errorSize in  // diffusers' set_timesteps
            var count: Int32 = -1
            _ = reporting(error, errorSize) {
                let instance = box(pointer)
                instance.evaluations = try instance.sampler.setTimesteps(Int(steps))
                count = Int32(instance.evaluations.count)
                guard let timesteps else { return }
                guard instance.evaluations.count <= Int(capacity) else {
                    throw PluginError("room for \(capacity) timesteps, not \(instance.evaluations.count)")
                }
                for (i, evaluation) in instance.evaluations.enumerated() {
                    timesteps[i] = Int32(evaluation.time.rounded(.toNearestOrEven))
                }
            }
            return count
        },
        step: { pointer, index, images, size, output, sample, previous, original, generators, error, errorSize in
            reporting(error, errorSize) {  // consumes one evaluation of every image in the batch
                try box(pointer).sampler.step(
                    index: Int(index), images: Int(images), size: Int(size), output: output!, sample: sample!,
                    previous: previous!, original: original, generators: generators)
            }
        },
        save_state: { pointer, blob, capacity in  // the sampler's versioned state bytes
            let bytes = box(pointer).sampler.saveState()
            guard let blob else { return Int64(bytes.count) }
            guard capacity >= Int64(bytes.count) else { return -1 }
            blob.copyMemory(from: bytes, byteCount: bytes.count)
            return Int64(bytes.count)
        },
        restore_state: { pointer, blob, size, error, errorSize in  // refuses a version it does not know
            reporting(error, errorSize) {
                let bytes = blob.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(size))) } ?? []
                try box(pointer).sampler.restoreState(bytes)
            }
        },
        diffusers_classes: classes.isEmpty ? nil  // the scheduler configs that choose it by default
            : permanentArray(classes.map { Optional(permanentCString($0)) } + [nil]),
        describe: { pointer, index, evaluation, error, errorSize in  // one evaluation of set_timesteps' plan
            reporting(error, errorSize) {
                let planned = box(pointer).evaluations
                guard planned.indices.contains(Int(index)) else {
                    throw PluginError("evaluation \(index) of \(planned.count)")
                }
                let e = planned[Int(index)]
                evaluation!.pointee.step = Int32(e.step)
                evaluation!.pointee.time = e.time
                evaluation!.pointee.alpha_cumprod = e.alphaCumprod
                evaluation!.pointee.input_scale = e.inputScale
                evaluation!.pointee.model_variance = e.modelVariance ? 1 : 0
            }
        },
        init_noise_sigma: { box($0).sampler.initNoiseSigma }))  // x_T's scale
}

/// A plugin descriptor for a library of samplers and schedules.
public func pluginDescriptor(name: String, version: String, schedules: [UnsafePointer<dfn_schedule>] = [],
                             samplers: [UnsafePointer<dfn_sampler>] = [],
                             guidances: [UnsafePointer<dfn_guidance>] = []) -> UnsafePointer<dfn_plugin>
{
    permanent(dfn_plugin(
        abi_version: pluginABIVersion,  // the host rejects a differing major or newer minor
        size: UInt32(MemoryLayout<dfn_plugin>.size),  // fields past this size are absent
        name: permanentCString(name),  // the library, for logs
        version: permanentCString(version),  // this plugin's own version
        schedule_count: Int32(schedules.count),  // the noise schedules it provides
        schedules: schedules.isEmpty ? nil : permanentArray(schedules.map { Optional($0) }),
        sampler_count: Int32(samplers.count),  // the samplers it provides
        samplers: samplers.isEmpty ? nil : permanentArray(samplers.map { Optional($0) }),
        guidance_count: Int32(guidances.count),  // the guidance methods it provides
        guidances: guidances.isEmpty ? nil : permanentArray(guidances.map { Optional($0) })))
}

/// Whether a host may load a plugin built against this header: the same major,
/// and a minor at least this header's (a 1.1 sampler needs a 1.1 host).
public func hostIsCompatible(_ host: UnsafePointer<dfn_host>?) -> Bool {
    guard let host else { return false }
    return host.pointee.abi_version >> 16 == pluginABIVersion >> 16
        && host.pointee.abi_version & 0xffff >= pluginABIVersion & 0xffff
}

final class SamplerBox {
    let sampler: any SamplerInstance
    var evaluations: [Evaluation] = []
    init(_ sampler: any SamplerInstance) { self.sampler = sampler }
}

private func box(_ pointer: UnsafeMutableRawPointer?) -> SamplerBox {
    Unmanaged<SamplerBox>.fromOpaque(pointer!).takeUnretainedValue()
}

func permanentArray<T>(_ items: [T]) -> UnsafePointer<T> {
    let copy = UnsafeMutablePointer<T>.allocate(capacity: max(items.count, 1))
    copy.initialize(from: items, count: items.count)
    return UnsafePointer(copy)
}
