import DiffusionKernels
import DiffusionModels
import Foundation

/// A job rendered stage by stage: each stage's `Render` runs to its end, its
/// images are kept, and the next stage's render begins conditioned on them
/// (Ho et al.'s cascade). A job without stages is its one render. The models
/// of later stages are loaded when their stage begins, through `loadModel` (the
/// daemon's model cache, or the resolver).
public final class CascadeRender: @unchecked Sendable {
    public let plan: CascadePlan
    /// The stage running (0: the job itself).
    public private(set) var stage = 0
    public private(set) var current: Render
    /// Each finished stage's images `[count, C, H, W]`, decoded, before clamping.
    public private(set) var stageImages: [Tensor] = []
    private let loadModel: (String) throws -> LoadedModel
    private let runtime: KernelRuntime

    public init(plan: CascadePlan, runtime: KernelRuntime, loadModel: @escaping (String) throws -> LoadedModel) throws {
        self.plan = plan
        self.runtime = runtime
        self.loadModel = loadModel
        current = try Render(plan: plan.first, model: try loadModel(plan.first.job.model), runtime: runtime)
    }

    public var job: Job { plan.job }
    public var isLastStage: Bool { stage == plan.stages.count - 1 }
    public var isFinished: Bool { isLastStage && current.isFinished }
    /// Steps done over every stage.
    public var completedSteps: Int { plan.stages[..<stage].reduce(0) { $0 + $1.job.steps } + current.completedSteps }

    /// The current stage has ended: its images are kept and the next stage begins on them.
    public func advance() throws {
        precondition(current.isFinished && !isLastStage, "advance() before the stage's end, or after the last")
        try begin(stage: stage + 1, after: stageImages + [try current.images(of: current.sample)])
    }

    private func begin(stage index: Int, after images: [Tensor]) throws {
        let stagePlan = plan.stages[index]
        let range = plan.stages[index - 1].model.sampleRange
        current = try Render(plan: stagePlan, model: try loadModel(stagePlan.job.model), runtime: runtime,
                             lowResolution: Self.conditioningInput(images[index - 1], range: range))
        (stage, stageImages) = (index, images)
    }

    /// A stage's images as the next stage reads them: mapped from the model's
    /// sample range onto −1...1 and clamped, as its PNGs hold them (without the
    /// 8-bit rounding).
    public static func conditioningInput(_ images: Tensor, range: ClosedRange<Float>) -> Tensor {
        let output = Tensor(uninitialized: images.shape)
        let (low, span) = (range.lowerBound, range.upperBound - range.lowerBound)
        for i in 0..<images.count { output.data[i] = min(max((images.data[i] - low) / span * 2 - 1, -1), 1) }
        return output
    }

    /// Runs every stage to its end, calling `progress(stage, step, total)` after
    /// each step (the step and total within the stage); returns the last stage's render.
    @discardableResult
    public func run(progress: (Int, Int, Int) -> Void = { _, _, _ in }) throws -> Render {
        while true {
            try current.run { progress(stage, $0, $1) }
            if isLastStage { return current }
            try advance()
        }
    }

    /// The state now: the current stage's render and the images before it.
    public func checkpoint(jobKey: String) -> RenderCheckpoint {
        var checkpoint = current.checkpoint(jobKey: jobKey)
        checkpoint.stage = stage
        checkpoint.stageImages = stageImages.map {
            .init(shape: $0.shape, data: Data(bytes: $0.data, count: $0.count * MemoryLayout<Float>.size))
        }
        return checkpoint
    }

    /// Continues from `checkpoint` at its stage, with the earlier stages' images
    /// it holds; false (and at stage 1, from its start) when it is not this
    /// job's. A later stage's model is loaded here.
    public func resume(from checkpoint: RenderCheckpoint, jobKey: String) throws -> Bool {
        let index = checkpoint.stage ?? 0
        guard index == stage || (index > 0 && index < plan.stages.count) else { return false }
        if index != stage {
            guard let saved = checkpoint.stageImages, saved.count == index else { return false }
            var images: [Tensor] = []
            for (number, entry) in saved.enumerated() {
                let stagePlan = plan.stages[number]
                let factor = stagePlan.model.latent?.factor ?? 1
                let shape = [stagePlan.job.count, stagePlan.model.imageChannels, stagePlan.sampleShape[1] * factor,
                             stagePlan.sampleShape[2] * factor]
                guard entry.shape == shape, entry.data.count == shape.reduce(1, *) * MemoryLayout<Float>.size else { return false }
                let image = Tensor(uninitialized: shape)
                entry.data.withUnsafeBytes { image.data.update(from: $0.bindMemory(to: Float.self).baseAddress!, count: image.count) }
                images.append(image)
            }
            try begin(stage: index, after: images)
        }
        if try current.resume(from: checkpoint, jobKey: jobKey) { return true }
        if stage != 0 {
            stageImages = []
            stage = 0
            current = try Render(plan: plan.first, model: try loadModel(plan.first.job.model), runtime: runtime)
        }
        return false
    }
}
