/// A sampler's state blob: a UInt32 version first, then the fields in the order
/// the sampler writes them, all little-endian; float arrays carry their count.
/// Doubles and floats are stored bit for bit, so a restored sampler continues
/// bit-identically.
public struct StateWriter {
    public private(set) var bytes: [UInt8] = []

    public init(version: UInt32) { integer(version) }

    public mutating func integer<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }

    public mutating func number(_ value: Double) { integer(value.bitPattern) }

    public mutating func numbers(_ values: [Double]) {
        integer(UInt32(values.count))
        values.forEach { number($0) }
    }

    public mutating func floats(_ values: [Float]) {
        integer(UInt32(values.count))
        values.forEach { integer($0.bitPattern) }
    }

    /// A list of float arrays (a multistep history), each with its count.
    public mutating func history(_ arrays: [[Float]]) {
        integer(UInt32(arrays.count))
        arrays.forEach { floats($0) }
    }
}

/// Reads what `StateWriter` wrote; every read checks the blob is long enough.
public struct StateReader {
    let bytes: [UInt8]
    var offset = 0

    /// Refuses a blob whose version is not `version`.
    public init(_ bytes: [UInt8], version: UInt32) throws {
        self.bytes = bytes
        guard bytes.count >= 4 else { throw PluginError("sampler state of \(bytes.count) bytes is too short") }
        let found: UInt32 = try integer()
        guard found == version else { throw PluginError("sampler state version \(found) is not known (\(version) is)") }
    }

    public mutating func integer<T: FixedWidthInteger>(_: T.Type = T.self) throws -> T {
        let size = MemoryLayout<T>.size
        guard offset + size <= bytes.count else { throw PluginError("sampler state of \(bytes.count) bytes is truncated") }
        var value: T = 0
        for i in (0..<size).reversed() { value = value << 8 | T(truncatingIfNeeded: bytes[offset + i]) }
        offset += size
        return value
    }

    public mutating func number() throws -> Double { Double(bitPattern: try integer()) }

    public mutating func numbers() throws -> [Double] {
        let count = Int(try integer(UInt32.self))
        guard count * 8 <= bytes.count - offset else { throw PluginError("sampler state of \(bytes.count) bytes is truncated") }
        return try (0..<count).map { _ in try number() }
    }

    public mutating func floats() throws -> [Float] {
        let count = Int(try integer(UInt32.self))
        guard count * 4 <= bytes.count - offset else { throw PluginError("sampler state of \(bytes.count) bytes is truncated") }
        return try (0..<count).map { _ in Float(bitPattern: try integer()) }
    }

    public mutating func history() throws -> [[Float]] {
        let count = Int(try integer(UInt32.self))
        guard count <= bytes.count - offset else { throw PluginError("sampler state of \(bytes.count) bytes is truncated") }
        return try (0..<count).map { _ in try floats() }
    }

    /// Reads the plan's size (steps, or evaluations) the blob was saved with and
    /// refuses one saved for another plan.
    public mutating func plan(_ expected: Int) throws {
        let saved = Int(try integer(UInt32.self))
        guard saved == expected else { throw PluginError("sampler state is for a plan of \(saved), not \(expected)") }
    }

    /// Ends the read: a blob with bytes left over is not this sampler's.
    public func finish() throws {
        guard offset == bytes.count else { throw PluginError("sampler state has \(bytes.count - offset) bytes past its end") }
    }
}

/// A sampler whose only state is its timesteps, as DDPM's and DDIM's is: it gets
/// `setTimesteps` (diffusers' spacing rules) and the state blob (version 1: the
/// count and the Int32 timesteps) for free.
public protocol TimestepSampler: SamplerInstance {
    var settings: SamplerSettings { get }
    var alphasCumprod: [Double] { get }
    var timesteps: [Int32] { get set }
}

extension TimestepSampler {
    public func setTimesteps(_ steps: Int) throws -> [Evaluation] {
        timesteps = try settings.timesteps(steps: steps, trainSteps: alphasCumprod.count)
        return timesteps.enumerated().map { Evaluation(step: $0, time: Double($1), alphaCumprod: alphasCumprod[Int($1)]) }
    }

    public func saveState() -> [UInt8] {
        var writer = StateWriter(version: 1)
        writer.integer(UInt32(timesteps.count))
        timesteps.forEach { writer.integer($0) }
        return writer.bytes
    }

    public func restoreState(_ bytes: [UInt8]) throws {
        var reader = try StateReader(bytes, version: 1)
        let count = Int(try reader.integer(UInt32.self))
        guard count * 4 <= bytes.count else { throw PluginError("sampler state of \(bytes.count) bytes for \(count) timesteps") }
        let restored = try (0..<count).map { _ in try reader.integer(Int32.self) }
        try reader.finish()
        guard restored.allSatisfy({ (0..<alphasCumprod.count).contains(Int($0)) }) else {
            throw PluginError("sampler state names a timestep outside 0..<\(alphasCumprod.count)")
        }
        timesteps = restored
    }
}

/// The state of a sampler that keeps nothing between steps but its plan, which
/// the config rebuilds: version 1 and the number of steps, checked on restore.
public enum PlanOnlyState {
    public static func encode(steps: Int) -> [UInt8] {
        var writer = StateWriter(version: 1)
        writer.integer(UInt32(steps))
        return writer.bytes
    }

    public static func check(_ bytes: [UInt8], steps: Int) throws {
        var reader = try StateReader(bytes, version: 1)
        try reader.plan(steps)
        try reader.finish()
    }
}
