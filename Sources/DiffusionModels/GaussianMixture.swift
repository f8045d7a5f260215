import DiffusionKernels
import Foundation

/// A mixture of isotropic Gaussians with exact answers, the test model of the
/// render pipeline: `gmm.json` is
/// `{"shape": [C, H, W], "components": [{"mean": number or [C·H·W numbers], "std": s, "weight": w, "label": y}],
/// "parameterization": "epsilon" (default) or "ve_score"}`.
///
/// Under x_t = √ᾱ·x₀ + √(1−ᾱ)·ε, component k becomes N(√ᾱ·μ_k, (ᾱ·s_k² + 1 − ᾱ)·I),
/// so the score ∇ log p(x_t) = −Σ_k r_k(x_t)·(x_t − √ᾱ·μ_k)/σ_k² is exact (r_k the
/// posterior weights) and ε = −√(1−ᾱ)·score. The null label (`classCount − 1`)
/// is the whole mixture; any other label is the mixture of its components. The
/// classifier gradient is exact too: ∇ log p(y | x_t) = score_y − score_all.
public final class GaussianMixture: DenoisingModel, NoisyClassifier {
    public struct Component: Sendable {
        public let mean: [Double]
        public let std: Double
        public let weight: Double
        public let label: Int
    }

    /// What the model returns: ε of a VP sample (DDPM's models), or the score
    /// ∇ log p_σ(x) of a VE sample x₀ + σ·ε (NCSN's, for score_sde_ve and langevin).
    public enum Parameterization: String, Sendable {
        case epsilon
        case varianceExplodingScore = "ve_score"
    }

    public let sampleShape: [Int]
    public let components: [Component]
    public let classCount: Int?
    public let parameterization: Parameterization

    public init(json data: Data, source: String) throws {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let shape = (object["shape"] as? [NSNumber])?.map(\.intValue), shape.count == 3, shape.allSatisfy({ $0 > 0 }),
              let list = object["components"] as? [[String: Any]], !list.isEmpty
        else { throw DiffusionError("\(source): needs \"shape\" [C, H, W] and a non-empty \"components\" list") }
        let size = shape.reduce(1, *)
        sampleShape = shape
        guard let parameterization = Parameterization(rawValue: object["parameterization"] as? String ?? "epsilon") else {
            throw DiffusionError("\(source): parameterization must be \"epsilon\" or \"ve_score\"")
        }
        self.parameterization = parameterization
        components = try list.enumerated().map { index, entry in
            let mean: [Double]
            if let scalar = entry["mean"] as? NSNumber {
                mean = [Double](repeating: scalar.doubleValue, count: size)
            } else if let values = entry["mean"] as? [NSNumber], values.count == size {
                mean = values.map(\.doubleValue)
            } else {
                throw DiffusionError("\(source): component \(index) needs a mean: a number or \(size) numbers")
            }
            guard let std = (entry["std"] as? NSNumber)?.doubleValue, std > 0,
                  let weight = (entry["weight"] as? NSNumber)?.doubleValue, weight > 0,
                  let label = (entry["label"] as? NSNumber)?.intValue, label >= 0
            else { throw DiffusionError("\(source): component \(index) needs std > 0, weight > 0 and a label ≥ 0") }
            return Component(mean: mean, std: std, weight: weight, label: label)
        }
        classCount = components.map(\.label).max()! + 2
    }

    var nullLabel: Int { classCount! - 1 }

    /// The score ∇ log p_t(x) of the components `selected` for one image.
    func score(_ x: UnsafePointer<Float>, alpha: Double, selected: [Component], into out: UnsafeMutablePointer<Double>) {
        let size = sampleShape.reduce(1, *)
        let root = alpha.squareRoot()
        // Raw pointers: the score samplers call this millions of times, in debug builds too.
        let logWeights = selected.map { c in
            let variance = alpha * c.std * c.std + 1 - alpha
            let squared = c.mean.withUnsafeBufferPointer { mean in
                var sum = 0.0
                for i in 0..<size {
                    let d = Double(x[i]) - root * mean[i]
                    sum += d * d
                }
                return sum
            }
            return log(c.weight) - 0.5 * Double(size) * log(variance) - 0.5 * squared / variance
        }
        let peak = logWeights.max()!
        let weights = logWeights.map { exp($0 - peak) }
        let total = weights.reduce(0, +)
        out.update(repeating: 0, count: size)
        for (k, c) in selected.enumerated() {
            let r = weights[k] / total
            guard r > 1e-300 else { continue }
            let factor = r / (alpha * c.std * c.std + 1 - alpha)
            c.mean.withUnsafeBufferPointer { mean in
                for i in 0..<size { out[i] -= factor * (Double(x[i]) - root * mean[i]) }
            }
        }
    }

    func selected(_ label: Int) throws -> [Component] {
        guard (0..<classCount!).contains(label) else { throw DiffusionError("class label \(label) outside 0..<\(classCount!)") }
        if label == nullLabel { return components }
        let chosen = components.filter { $0.label == label }
        guard !chosen.isEmpty else { throw DiffusionError("the mixture has no component of label \(label)") }
        return chosen
    }

    public func predict(_ sample: Tensor, timesteps: [Float], alphasCumprod: [Double], classLabels: [Int]?,
                        context: Tensor?, on runtime: KernelRuntime) throws -> Tensor
    {
        guard context == nil else { throw DiffusionError("a Gaussian mixture takes no prompt") }
        let output = Tensor(uninitialized: sample.shape)
        let size = sample.sliceCount
        var score = [Double](repeating: 0, count: size)
        var scaled = [Float](repeating: 0, count: size)
        for image in 0..<sample.shape[0] {
            let alpha = alphasCumprod[image]
            let chosen = try selected(classLabels?[image] ?? nullLabel)
            let x = sample.data + image * size
            switch parameterization {
            case .epsilon:
                score.withUnsafeMutableBufferPointer { self.score(x, alpha: alpha, selected: chosen, into: $0.baseAddress!) }
                let scale = -(1 - alpha).squareRoot()
                for i in 0..<size { output.data[image * size + i] = Float(scale * score[i]) }
            case .varianceExplodingScore:
                // x = x₀ + σ·ε with σ² = (1 − ᾱ)/ᾱ is the VP sample over √ᾱ: ∇ log p_σ(x) = √ᾱ·score_VP(√ᾱ·x)
                let root = alpha.squareRoot()
                for i in 0..<size { scaled[i] = Float(root * Double(x[i])) }
                scaled.withUnsafeBufferPointer { input in
                    score.withUnsafeMutableBufferPointer { self.score(input.baseAddress!, alpha: alpha, selected: chosen, into: $0.baseAddress!) }
                }
                for i in 0..<size { output.data[image * size + i] = Float(root * score[i]) }
            }
        }
        return output
    }

    public func logProbabilityGradient(_ sample: Tensor, timesteps: [Float], alphasCumprod: [Double], labels: [Int],
                                       on runtime: KernelRuntime) throws -> Tensor
    {
        let output = Tensor(uninitialized: sample.shape)
        let size = sample.sliceCount
        var conditional = [Double](repeating: 0, count: size), all = conditional
        for image in 0..<sample.shape[0] {
            let x = sample.data + image * size
            let chosen = try selected(labels[image])
            conditional.withUnsafeMutableBufferPointer { score(x, alpha: alphasCumprod[image], selected: chosen, into: $0.baseAddress!) }
            all.withUnsafeMutableBufferPointer { score(x, alpha: alphasCumprod[image], selected: components, into: $0.baseAddress!) }
            for i in 0..<size { output.data[image * size + i] = Float(conditional[i] - all[i]) }
        }
        return output
    }
}
