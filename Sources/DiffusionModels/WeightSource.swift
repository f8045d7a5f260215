import DiffusionKernels

/// Where a model's tensors come from: a checkpoint, or random values for benchmarks and tests.
public protocol WeightSource {
    /// Names the source in error messages.
    var origin: String { get }
    func contains(_ name: String) -> Bool
    /// The tensor's shape, or nil when the source has no such tensor or makes any shape.
    func shape(of name: String) -> [Int]?
    func tensor(_ name: String, shape: [Int]) -> Tensor
    /// Names the source holds that were not in `used`.
    func unused(after used: Set<String>) -> [String]
}

extension SafeTensorsFile: WeightSource {
    public var origin: String { path }
    public func contains(_ name: String) -> Bool { entries[name] != nil }
    public func shape(of name: String) -> [Int]? { entries[name]?.shape }
    public func tensor(_ name: String, shape: [Int]) -> Tensor { tensor(name)! }
    public func unused(after used: Set<String>) -> [String] { entries.keys.filter { !used.contains($0) }.sorted() }
}

/// Reproducible random weights of whatever shape a model asks for: each tensor is
/// drawn from its own Philox stream keyed by the seed and the tensor's name, with
/// PyTorch's default scale (uniform in ±1/√fan_in) and norm scales near one, so
/// no layer is zero and activations stay in range.
public struct RandomWeights: WeightSource {
    public let seed: UInt64

    public init(seed: UInt64) { self.seed = seed }

    public var origin: String { "random weights (seed \(seed))" }
    public func contains(_ name: String) -> Bool { true }
    public func shape(of name: String) -> [Int]? { nil }
    public func unused(after used: Set<String>) -> [String] { [] }

    public func tensor(_ name: String, shape: [Int]) -> Tensor {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in name.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        var generator = Philox(seed: seed ^ hash)
        let tensor = Tensor(uninitialized: shape)
        let isNorm = name.contains("norm")
        let fanIn = shape.count > 1 ? shape.dropFirst().reduce(1, *) : 1
        let bound: Float = isNorm || shape.count == 1 ? 0.2 : 1 / Float(fanIn).squareRoot()
        let center: Float = isNorm && name.hasSuffix(".weight") ? 1 : 0
        for i in 0..<tensor.count { tensor.data[i] = center + bound * (2 * generator.nextUniform() - 1) }
        return tensor
    }
}
