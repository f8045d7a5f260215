/// The C side of a Swift sampler: a sampler implements `SamplerInstance`, and
/// `samplerDescriptor` builds its `dfn_sampler` with shared entry points, so a
/// sampler file holds only its arithmetic and its `create` function.
public protocol SamplerInstance: AnyObject {
    /// diffusers' `set_timesteps`: the timesteps of `steps` steps in evaluation order.
    func setTimesteps(_ steps: Int) throws -> [Int32]
    func step(index: Int, images: Int, size: Int, output: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              previous: UnsafeMutablePointer<Float>, original: UnsafeMutablePointer<Float>?,
              generators: UnsafePointer<OpaquePointer?>?) throws
    /// The state a resumed job needs, and its restoration.
    func saveState() -> [UInt8]
    func restoreState(_ bytes: [UInt8]) throws
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

public func samplerDescriptor(name: String, summary: String, create: SamplerCreate) -> UnsafePointer<dfn_sampler> {
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
                let chosen = try box(pointer).sampler.setTimesteps(Int(steps))
                guard chosen.count <= Int(capacity) else { throw PluginError("room for \(capacity) timesteps, not \(chosen.count)") }
                timesteps!.update(from: chosen, count: chosen.count)
                count = Int32(chosen.count)
            }
            return count
        },
        step: { pointer, index, images, size, output, sample, previous, original, generators, error, errorSize in
            reporting(error, errorSize) {  // one update of every image in the batch
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
        }))
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

/// Whether a host of this ABI may load a plugin built against this header.
public func hostIsCompatible(_ host: UnsafePointer<dfn_host>?) -> Bool {
    guard let host else { return false }
    return host.pointee.abi_version >> 16 == pluginABIVersion >> 16
}

final class SamplerBox {
    let sampler: any SamplerInstance
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
