/// The state of samplers whose only state is their timesteps: a UInt32 version
/// (1), a UInt32 count, then the Int32 timesteps, all little-endian.
public enum SamplerState {
    public static func encode(_ timesteps: [Int32]) -> [UInt8] {
        var bytes: [UInt8] = []
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        append(UInt32(1))
        append(UInt32(timesteps.count))
        timesteps.forEach(append)
        return bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> [Int32] {
        func word(_ i: Int) -> UInt32 {
            bytes[(4 * i)..<(4 * i + 4)].reversed().reduce(0) { $0 << 8 | UInt32($1) }
        }
        guard bytes.count >= 8 else { throw PluginError("sampler state of \(bytes.count) bytes is too short") }
        guard word(0) == 1 else { throw PluginError("sampler state version \(word(0)) is not known (1 is)") }
        let count = Int(word(1))
        guard bytes.count == 8 + 4 * count else { throw PluginError("sampler state of \(bytes.count) bytes for \(count) timesteps") }
        return (0..<count).map { Int32(bitPattern: word(2 + $0)) }
    }
}

/// A sampler whose only state is its timesteps, as DDPM's and DDIM's is: it gets
/// `setTimesteps` (diffusers' spacing rules) and the state blob for free.
public protocol TimestepSampler: SamplerInstance {
    var settings: SamplerSettings { get }
    var trainSteps: Int { get }
    var timesteps: [Int32] { get set }
}

extension TimestepSampler {
    public func setTimesteps(_ steps: Int) throws -> [Int32] {
        timesteps = try settings.timesteps(steps: steps, trainSteps: trainSteps)
        return timesteps
    }

    public func saveState() -> [UInt8] { SamplerState.encode(timesteps) }

    public func restoreState(_ bytes: [UInt8]) throws { timesteps = try SamplerState.decode(bytes) }
}
