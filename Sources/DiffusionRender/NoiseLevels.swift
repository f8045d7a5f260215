import DiffusionPluginABI
import DiffusionKernels
import Foundation

/// The training-time noise levels: betas from a schedule plugin (or the config's
/// own `trained_betas`) and their cumulative products ᾱ_t = Π_{s≤t} (1 − β_s).
public struct NoiseLevels: Sendable {
    public let schedule: String
    public let betas: [Double]
    public let alphasCumprod: [Double]

    public var trainSteps: Int { betas.count }

    /// Reads `beta_schedule` (default `linear`), `num_train_timesteps` (1000) and
    /// `trained_betas` as diffusers does; the schedule reads its own options.
    public init(options: ComponentOptions, registry: PluginRegistry) throws {
        let trainSteps = try Self.integer(options.value("num_train_timesteps"), key: "num_train_timesteps") ?? 1000
        let name = options.value("beta_schedule") as? String ?? "linear"
        var betas: [Double]
        if let trained = options.value("trained_betas") {
            guard let list = trained as? [NSNumber], !list.isEmpty else {
                throw DiffusionError("trained_betas must be a list of numbers")
            }
            betas = list.map(\.doubleValue)
            schedule = "trained_betas"
        } else {
            guard (1...100_000).contains(trainSteps) else {
                throw DiffusionError("num_train_timesteps must be between 1 and 100000, not \(trainSteps)")
            }
            guard let component = registry.schedules[name] else {
                let known = registry.schedules.keys.sorted().joined(separator: ", ")
                throw DiffusionError("beta_schedule \"\(name)\" is not provided by any plugin (available: \(known))")
            }
            var computed = [Double](repeating: 0, count: trainSteps)
            try pluginCall("beta_schedule \(name)") { error, size in
                computed.withUnsafeMutableBufferPointer { buffer in
                    component.descriptor.pointee.betas(PluginHost.table, options.handle, Int32(trainSteps),
                                                       buffer.baseAddress, error, size) == DFN_OK
                }
            }
            betas = computed
            schedule = name
        }
        if let bad = betas.first(where: { !($0 > 0 && $0 < 1) }) {
            throw DiffusionError("beta_schedule \(schedule): every beta must lie in (0, 1), found \(bad)")
        }
        var product = 1.0
        alphasCumprod = betas.map { beta in
            product *= 1 - beta
            return product
        }
        self.betas = betas
    }

    static func integer(_ raw: Any?, key: String) throws -> Int? {
        guard let raw else { return nil }
        guard let number = raw as? NSNumber, !PluginHost.isBool(number), number.doubleValue == number.doubleValue.rounded()
        else { throw DiffusionError("\(key) must be a whole number") }
        return number.intValue
    }
}
