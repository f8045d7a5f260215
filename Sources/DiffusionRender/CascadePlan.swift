import DiffusionKernels
import DiffusionModels
import Foundation

/// A job's render plans, one per stage: the job itself, then each of its
/// `stages`, every one planned against its own model and conditioned on the
/// images of the stage before (their shape, known from that stage's plan).
/// A job without stages is one plan. What any stage could not render is
/// refused here, naming the stage.
public final class CascadePlan: @unchecked Sendable {
    public let job: Job
    public let stages: [RenderPlan]

    public var first: RenderPlan { stages[0] }
    /// Steps of every stage together, for progress and ETA.
    public var totalSteps: Int { stages.reduce(0) { $0 + $1.job.steps } }

    /// `describe` gives a model name's description; `initNoise` is stage 1's.
    public init(job: Job, describe: (String) throws -> ModelDescription, registry: PluginRegistry, limits: RenderLimits,
                initNoise: Tensor?) throws
    {
        self.job = job
        if !job.stages.isEmpty, job.formats.contains(.latents) {
            throw DiffusionError("format latents: a cascade's images are its last stage's; ask for \"stages\" to keep each stage's")
        }
        // the job's prompts are its text-conditioned stages': a first stage that reads none leaves them
        let firstModel = try describe(job.model)
        var firstJob = job
        if firstModel.text == nil, job.prompts != nil, !job.stages.isEmpty {
            (firstJob.prompts, firstJob.negativePrompts) = (nil, nil)
        }
        var plans = [try RenderPlan(job: firstJob, model: firstModel, registry: registry, limits: limits,
                                    initNoise: initNoise)]
        for (index, stage) in job.stages.enumerated() {
            let number = index + 2
            do {
                let previous = plans[plans.count - 1]
                var stageJob = stage
                let model = try describe(stage.model)
                // stage K of image i draws from imageSeed(seed_i, K)
                stageJob.seeds = plans[0].seeds.map { Job.imageSeed($0, number) }
                stageJob.formats = job.formats.filter { $0 != .stages }
                if model.text != nil {
                    stageJob.prompts = stage.prompts ?? job.prompts
                    stageJob.negativePrompts = stage.negativePrompts ?? job.negativePrompts
                }
                stageJob.gridColumns = job.gridColumns
                let channels = previous.model.imageChannels
                let factor = previous.model.latent?.factor ?? 1
                plans.append(try RenderPlan(job: stageJob, model: model, registry: registry, limits: limits, initNoise: nil,
                                            previousStage: [channels, previous.sampleShape[1] * factor, previous.sampleShape[2] * factor]))
            } catch let error as DiffusionError {
                throw DiffusionError("stage \(number) (\(stage.model)): \(error.message)")
            }
        }
        let total = plans.reduce(0) { $0 + $1.job.steps }
        if total > limits.maxSteps {
            throw DiffusionError("the stages' \(total) steps together are over the limit of \(limits.maxSteps)")
        }
        stages = plans
    }

    /// The job with every default filled in, as job.json records it: stage 1's
    /// settings, and each later stage's under "stages".
    public var resolvedJob: [String: Any] {
        var resolved = first.resolvedJob
        guard stages.count > 1 else { return resolved }
        let stageKeys = Job.stageKeys.union(["seed"])
        resolved["stages"] = stages.dropFirst().map { plan in plan.resolvedJob.filter { stageKeys.contains($0.key) } }
        return resolved
    }
}
