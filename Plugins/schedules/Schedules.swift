/// The `linear`, `scaled_linear` and `squaredcos_cap_v2` noise schedules
/// (diffusers' `beta_schedule`), with diffusers' options and defaults
/// `beta_start` 0.0001 and `beta_end` 0.02. Computed in double; diffusers builds
/// the linear ones in float32, so betas agree to float32 rounding.
/// (`sigmoid` is its own plugin, written in C.)
import DiffusionPluginKit
import Foundation

/// β evenly spaced from beta_start to beta_end (Ho et al. 2020).
func linearBetas(_ options: PluginOptions, _ betas: UnsafeMutablePointer<Double>, _ count: Int) throws {
    let (start, end) = try (options.number("beta_start", default: 0.0001), options.number("beta_end", default: 0.02))
    for t in 0..<count { betas[t] = count == 1 ? start : start + (end - start) * Double(t) / Double(count - 1) }
}

/// √β evenly spaced from √beta_start to √beta_end, squared (latent diffusion).
func scaledLinearBetas(_ options: PluginOptions, _ betas: UnsafeMutablePointer<Double>, _ count: Int) throws {
    let start = try options.number("beta_start", default: 0.0001).squareRoot()
    let end = try options.number("beta_end", default: 0.02).squareRoot()
    for t in 0..<count {
        let root = count == 1 ? start : start + (end - start) * Double(t) / Double(count - 1)
        betas[t] = root * root
    }
}

/// β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999) with ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2)
/// (Nichol & Dhariwal 2021, eq. 17; diffusers' `betas_for_alpha_bar`).
func cosineBetas(_ options: PluginOptions, _ betas: UnsafeMutablePointer<Double>, _ count: Int) throws {
    func alphaBar(_ t: Double) -> Double {
        let c = cos((t + 0.008) / 1.008 * Double.pi / 2)
        return c * c
    }
    for t in 0..<count {
        betas[t] = min(1 - alphaBar(Double(t + 1) / Double(count)) / alphaBar(Double(t) / Double(count)), 0.999)
    }
}

/// A descriptor for one schedule. A C function pointer cannot capture, so each
/// schedule passes its own non-capturing entry, a one-line call of `betasEntry`.
func schedule(_ name: String, _ summary: String,
              _ entry: @convention(c) (UnsafePointer<dfn_host>?, OpaquePointer?, Int32, UnsafeMutablePointer<Double>?,
                                      UnsafeMutablePointer<CChar>?, Int) -> Int32) -> UnsafePointer<dfn_schedule>
{
    permanent(dfn_schedule(
        abi_version: pluginABIVersion,  // the header this file was built against
        size: UInt32(MemoryLayout<dfn_schedule>.size),  // fields this build has
        name: permanentCString(name),  // the beta_schedule value that selects it
        summary: permanentCString(summary),  // one line for listings
        betas: entry))  // fills beta_0 ... beta_{count-1}
}

func betasEntry(
    _ compute: (PluginOptions, UnsafeMutablePointer<Double>, Int) throws -> Void,
    _ host: UnsafePointer<dfn_host>?, _ options: OpaquePointer?, _ count: Int32, _ betas: UnsafeMutablePointer<Double>?,
    _ error: UnsafeMutablePointer<CChar>?, _ errorSize: Int
) -> Int32 {
    reporting(error, errorSize) { try compute(PluginOptions(host: host!, options: options), betas!, Int(count)) }
}

nonisolated(unsafe) let schedulesPlugin = pluginDescriptor(name: "schedules", version: "1.0.0", schedules: [
    schedule("linear", "betas evenly spaced from beta_start to beta_end") { betasEntry(linearBetas, $0, $1, $2, $3, $4, $5) },
    schedule("scaled_linear", "square roots of the betas evenly spaced, as in latent diffusion") {
        betasEntry(scaledLinearBetas, $0, $1, $2, $3, $4, $5)
    },
    schedule("squaredcos_cap_v2", "the cosine schedule of Nichol & Dhariwal, betas capped at 0.999") {
        betasEntry(cosineBetas, $0, $1, $2, $3, $4, $5)
    },
])

@_cdecl("diffusion_plugin_init")
public func diffusionPluginInit(_ host: UnsafePointer<dfn_host>?) -> UnsafePointer<dfn_plugin>? {
    hostIsCompatible(host) ? schedulesPlugin : nil
}
