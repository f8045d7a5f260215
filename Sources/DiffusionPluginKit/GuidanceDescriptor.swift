/// The C side of a Swift guidance method, as `samplerDescriptor` is for samplers.
/// Guidance built with it is stateless: everything it needs arrives with each step.
public protocol GuidanceInstance: AnyObject {
    /// The DFN_NEEDS_* bits of the evaluations `combine` reads.
    var needs: UInt32 { get }
    func combine(_ inputs: dfn_guidance_inputs, into guided: UnsafeMutablePointer<Float>) throws
}

public typealias GuidanceCreate = @convention(c) (
    UnsafePointer<dfn_host>?, OpaquePointer?, UnsafeMutablePointer<CChar>?, Int
) -> UnsafeMutableRawPointer?

/// `create`'s body: makes the instance, or reports why not.
public func makeGuidance(_ error: UnsafeMutablePointer<CChar>?, _ errorSize: Int,
                         _ make: () throws -> any GuidanceInstance) -> UnsafeMutableRawPointer?
{
    var made: UnsafeMutableRawPointer?
    _ = reporting(error, errorSize) { made = Unmanaged.passRetained(GuidanceBox(try make())).toOpaque() }
    return made
}

public func guidanceDescriptor(name: String, summary: String, create: GuidanceCreate) -> UnsafePointer<dfn_guidance> {
    permanent(dfn_guidance(
        abi_version: pluginABIVersion,  // the header this file was built against
        size: UInt32(MemoryLayout<dfn_guidance>.size),  // fields this build has
        name: permanentCString(name),  // the job's guidance "kind"
        summary: permanentCString(summary),  // one line for listings
        create: create,  // one instance per job, via makeGuidance
        destroy: { Unmanaged<GuidanceBox>.fromOpaque($0!).release() },  // ends the job's instance
        needs: { guidanceBox($0).guidance.needs },  // which evaluations to run
        combine: { pointer, inputs, guided, error, errorSize in  // the guided output of one step
            reporting(error, errorSize) { try guidanceBox(pointer).guidance.combine(inputs!.pointee, into: guided!) }
        },
        save_state: nil,  // the guidance methods of this kit keep no state between steps
        restore_state: nil))
}

final class GuidanceBox {
    let guidance: any GuidanceInstance
    init(_ guidance: any GuidanceInstance) { self.guidance = guidance }
}

private func guidanceBox(_ pointer: UnsafeMutableRawPointer?) -> GuidanceBox {
    Unmanaged<GuidanceBox>.fromOpaque(pointer!).takeUnretainedValue()
}

/// DFN_NEEDS_* as UInt32 (anonymous C enums import as Int).
public let needsConditional = UInt32(DFN_NEEDS_CONDITIONAL), needsUnconditional = UInt32(DFN_NEEDS_UNCONDITIONAL),
    needsClassifier = UInt32(DFN_NEEDS_CLASSIFIER)
