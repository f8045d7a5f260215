import DiffusionKernels
import DiffusionModels
import Foundation
import Testing

/// Random weights scaled up, so that signals survive the layers and the gradient is large.
struct AmplifiedWeights: WeightSource {
    let base = RandomWeights(seed: 11)
    var origin: String { "amplified \(base.origin)" }
    func contains(_ name: String) -> Bool { true }
    func shape(of name: String) -> [Int]? { nil }
    func unused(after used: Set<String>) -> [String] { [] }
    func tensor(_ name: String, shape: [Int]) -> Tensor {
        let t = base.tensor(name, shape: shape)
        for i in 0..<t.count { t.data[i] *= 2.5 }
        return t
    }
}

@Suite struct ClassifierTests {
    static let config = Data("""
        {"_class_name": "TimeConditionedClassifier", "in_channels": 2, "sample_size": 8,
         "block_out_channels": [8, 16, 16], "num_classes": 5, "flip_sin_to_cos": true, "freq_shift": 0}
        """.utf8)

    @Test func inputGradientMatchesFiniteDifferences() throws {
        let classifier = try TimeConditionedClassifier(config: Self.config, weights: AmplifiedWeights(), source: "config.json")
        let k = KernelRuntime(threadCount: 2)
        var generator = Philox(seed: 5)
        let x = Tensor(uninitialized: [2, 2, 8, 8])
        generator.fillNormal(x.data, count: x.count)
        let labels = [3, 1], timesteps: [Float] = [250, 900]
        let gradient = try classifier.logProbabilityGradient(x, timesteps: timesteps, alphasCumprod: [0.5, 0.1],
                                                             labels: labels, on: k)
        // Central differences in float32 on a handful of coordinates of each image.
        let step: Float = 1e-2
        var worst = 0.0
        for image in 0..<2 {
            for coordinate in [0, 17, 63, 64, 101, 127] {
                let index = image * 128 + coordinate
                let saved = x.data[index]
                x.data[index] = saved + step
                let plus = classifier.logProbabilities(x, timesteps: timesteps, labels: labels, on: k)[image]
                x.data[index] = saved - step
                let minus = classifier.logProbabilities(x, timesteps: timesteps, labels: labels, on: k)[image]
                x.data[index] = saved
                let numeric = (plus - minus) / Double(2 * step)
                worst = max(worst, abs(numeric - Double(gradient.data[index])) / max(abs(numeric), 1e-2))
            }
        }
        #expect(worst < 0.02, "worst relative error \(worst)")
        // The gradient is not trivially zero.
        #expect(gradient.scalars.map { abs($0) }.max()! > 0.05)
    }

    @Test func rejectsItsOwnBadConfig() {
        #expect(throws: DiffusionError("config.json: num_classes must be at least 2")) {
            _ = try TimeConditionedClassifier(
                config: Data(#"{"_class_name": "TimeConditionedClassifier", "block_out_channels": [8], "num_classes": 1}"#.utf8),
                weights: RandomWeights(seed: 1), source: "config.json")
        }
    }
}
