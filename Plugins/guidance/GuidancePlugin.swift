/// The guidance library: classifier-free guidance (`cfg`) and classifier guidance (`classifier`).
import DiffusionPluginKit

/// The scales either method accepts: far past any useful one (diffusers'
/// pipelines use 1 to 20), and small enough that no float32 output overflows.
let guidanceScales = -1000.0...1000.0

nonisolated(unsafe) let guidancePlugin = pluginDescriptor(name: "guidance", version: "1.0.0", guidances: [
    guidanceDescriptor(name: "cfg", summary: "classifier-free guidance (Ho & Salimans 2021)") { host, options, error, size in
        makeGuidance(error, size) { try ClassifierFreeGuidance(PluginOptions(host: host!, options: options)) }
    },
    guidanceDescriptor(name: "classifier", summary: "classifier guidance in eps space (Dhariwal & Nichol 2021)") {
        host, options, error, size in
        makeGuidance(error, size) { try ClassifierGuidance(host: host!, PluginOptions(host: host!, options: options)) }
    },
])

@_cdecl("diffusion_plugin_init")
public func diffusionPluginInit(_ host: UnsafePointer<dfn_host>?) -> UnsafePointer<dfn_plugin>? {
    hostIsCompatible(host) ? guidancePlugin : nil
}
