import DiffusionKernels
import DiffusionModels
import Foundation
import Testing

/// The default model shipped in models/fashion-mnist, as committed.
@Suite struct DefaultModelTests {
    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("models/fashion-mnist").path

    @Test func loadsWithItsClassifier() throws {
        let model = try ModelDirectory(path: Self.path).load()
        #expect(model.denoiser.sampleShape == [1, 28, 28])
        #expect(model.denoiser.classCount == 11)
        #expect(model.description.nullClass == 10)
        #expect(model.classifier != nil)
        let scale = try #require(model.description.recommendedGuidanceScale)
        #expect((1.5...5).contains(scale))
    }

    /// The shipped classifier against PyTorch on the same fp16 weights (made by
    /// tools/train/train_classifier.py): log-probabilities and input gradients.
    @Test func classifierMatchesPyTorch() throws {
        struct Reference: Decodable {
            let timesteps: [Float]
            let labels: [Int]
            let inputs: [Float]
            let log_probs: [Double]
            let gradients: [Double]
        }
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(Self.path)/classifier/reference.json"))
        let reference = try JSONDecoder().decode(Reference.self, from: data)
        let classifier = try #require(try ModelDirectory(path: Self.path).load().classifier as? TimeConditionedClassifier)
        let k = KernelRuntime(threadCount: 2)
        let x = Tensor(shape: [3, 1, 28, 28], scalars: reference.inputs)
        let logProbs = classifier.logProbabilities(x, timesteps: reference.timesteps, labels: reference.labels, on: k)
        for (ours, theirs) in zip(logProbs, reference.log_probs) { #expect(abs(ours - theirs) < 1e-4) }
        let gradient = try classifier.logProbabilityGradient(x, timesteps: reference.timesteps, alphasCumprod: [0, 0, 0],
                                                             labels: reference.labels, on: k)
        let scale = reference.gradients.map { abs($0) }.max()!
        let worst = zip(gradient.scalars, reference.gradients).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-4 * max(scale, 1), "worst gradient error \(worst) at scale \(scale)")
    }
}

/// The text-to-image model shipped in models/fashion-mnist-text, as committed:
/// a StableDiffusionPipeline directory diffusers itself runs
/// (tools/train/make_text_reference.py wrote what it made).
@Suite struct DefaultTextModelTests {
    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("models/fashion-mnist-text").path

    struct Reference: Decodable {
        let prompts: [String]
        let ids: [[Int]]
        let steps: Int
        let guidance_scale: Double
        let init_noise: [Float]
        let expected: [Float]
        let diffusers_f32_max_abs_deviation: Double
        let tolerance: Double
    }

    @Test func describesALatentTextModel() throws {
        let description = try ModelDirectory(path: Self.path).describe()
        #expect(description.text != nil && description.latent?.factor == 4)
        #expect(description.defaultImageSize == [32, 32] && description.imageChannels == 1)
        #expect(description.recommendedGuidanceScale != nil)
    }

    /// Its tokenizer gives transformers' ids (its image against diffusers' is
    /// LatentRenderTests' `theShippedTextModelMatchesDiffusers`).
    @Test func idsMatchTransformers() throws {
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: "\(Self.path)/reference.json")))
        let model = try ModelDirectory(path: Self.path).load()
        let encoder = try #require(model.textEncoder)
        #expect(reference.prompts.map(encoder.tokenizer.encode) == reference.ids)
    }
}
