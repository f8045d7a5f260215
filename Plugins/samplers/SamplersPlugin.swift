/// The sampler library: the diffusers schedulers people render with in 10–50
/// steps, one file each. Each declares the diffusers class it implements, so a
/// model's scheduler_config.json picks it by default.
import DiffusionPluginKit

nonisolated(unsafe) let samplersPlugin = pluginDescriptor(name: "samplers", version: "1.0.0", samplers: [
    eulerSampler,  // EulerDiscreteScheduler
    eulerAncestralSampler,  // EulerAncestralDiscreteScheduler
    heunSampler,  // HeunDiscreteScheduler
    lmsSampler,  // LMSDiscreteScheduler
    dpmSolverSampler,  // DPMSolverMultistepScheduler
    uniPCSampler,  // UniPCMultistepScheduler
    pndmSampler,  // PNDMScheduler
    lcmSampler,  // LCMScheduler
])

@_cdecl("diffusion_plugin_init")
public func diffusionPluginInit(_ host: UnsafePointer<dfn_host>?) -> UnsafePointer<dfn_plugin>? {
    hostIsCompatible(host) ? samplersPlugin : nil
}
