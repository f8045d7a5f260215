import DiffusionKernels
import Foundation

/// Everything a render needs to continue exactly where it was: the evaluations done,
/// x_t, every image's generator, and the sampler's and guidance's state blobs;
/// in a cascade, the stage and every earlier stage's images.
/// It names the program, the job and the model it belongs to; one that names
/// anything else is not resumed (the job starts again from its first step).
public struct RenderCheckpoint: Codable, Sendable {
    public static let format = 3

    public var format = RenderCheckpoint.format
    public var program: String
    public var job: String
    public var model: String
    /// Model evaluations consumed (steps, for samplers of one evaluation a step).
    public var evaluation: Int
    public var sampler: Data
    public var guidance: Data
    public var generators: [[UInt32]]
    public var shape: [Int]
    public var sample: Data
    /// The cascade stage (0: the first) and the images of the stages before it.
    public var stage: Int?
    public var stageImages: [StageImages]?

    public struct StageImages: Codable, Sendable {
        public var shape: [Int]
        public var data: Data
    }
}

extension Render {
    /// The render's state now; `jobKey` identifies the job (e.g. a hash of its JSON).
    public func checkpoint(jobKey: String) -> RenderCheckpoint {
        RenderCheckpoint(
            program: RenderOutput.programVersion, job: jobKey, model: model.contentHash, evaluation: completedEvaluations,
            sampler: Data(sampler.saveState()), guidance: Data(guidance?.saveState() ?? []),
            generators: generators.map(\.generator.state), shape: sample.shape,
            sample: Data(bytes: sample.data, count: sample.count * MemoryLayout<Float>.size))
    }

    /// Continues from `checkpoint` if it belongs to this program, job and model;
    /// returns false (and changes nothing) when it does not.
    public func resume(from checkpoint: RenderCheckpoint, jobKey: String) throws -> Bool {
        guard checkpoint.format == RenderCheckpoint.format, checkpoint.program == RenderOutput.programVersion,
              checkpoint.job == jobKey, checkpoint.model == model.contentHash, checkpoint.shape == sample.shape,
              (0..<evaluations.count).contains(checkpoint.evaluation),
              checkpoint.sample.count == sample.count * MemoryLayout<Float>.size,
              checkpoint.generators.count == generators.count
        else { return false }
        let states = checkpoint.generators.compactMap(Philox.init(state:))
        guard states.count == generators.count else { return false }
        try sampler.restoreState(Array(checkpoint.sampler))
        if let guidance, !checkpoint.guidance.isEmpty { try guidance.restoreState(Array(checkpoint.guidance)) }
        for (generator, state) in zip(generators, states) { generator.generator = state }
        let restored = Tensor(uninitialized: checkpoint.shape)
        checkpoint.sample.withUnsafeBytes { raw in
            restored.data.update(from: raw.bindMemory(to: Float.self).baseAddress!, count: restored.count)
        }
        sample = restored
        completedEvaluations = checkpoint.evaluation
        predictedOriginal = nil
        return true
    }
}
