/// The score-based samplers: models that return ∇ log p_σ(x) and take σ as
/// their time input (NCSN, NCSN++), sampled by Langevin dynamics.
import DiffusionPluginKit

nonisolated(unsafe) let scorePlugin = pluginDescriptor(name: "score", version: "1.0.0", samplers: [
    scoreSdeVeSampler,  // ScoreSdeVeScheduler
    langevinSampler,  // Song & Ermon 2019, no diffusers class
])

@_cdecl("diffusion_plugin_init")
public func diffusionPluginInit(_ host: UnsafePointer<dfn_host>?) -> UnsafePointer<dfn_plugin>? {
    hostIsCompatible(host) ? scorePlugin : nil
}
