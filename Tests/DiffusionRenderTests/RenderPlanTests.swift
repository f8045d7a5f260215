import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation
import Testing

/// How a plan picks and drives its sampler: the model's scheduler class through
/// the plugins' declarations, x_T's scale, and steps of several evaluations.
@Suite struct RenderPlanTests {
    func plan(_ job: String, schedulerClass: String) throws -> RenderPlan {
        let description = ModelDescription(
            sampleShape: [1, 1, 2], classCount: nil, nullClass: nil, hasClassifier: false, recommendedGuidanceScale: nil,
            schedulerConfigData: Data(#"{"_class_name": "\#(schedulerClass)", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#.utf8),
            schedulerConfigSource: "scheduler_config.json")
        return try RenderPlan(job: Job(json: Data(job.utf8), source: "job"), model: description, registry: TestSupport.registry,
                              limits: RenderLimits(), initNoise: nil)
    }

    @Test(arguments: [("PNDMScheduler", "pndm"), ("DPMSolverMultistepScheduler", "dpmsolver++"),
                      ("EulerDiscreteScheduler", "euler"), ("UniPCMultistepScheduler", "unipc"), ("DDIMScheduler", "ddim")])
    func theSchedulerClassPicksTheSampler(_ schedulerClass: String, _ sampler: String) throws {
        let plan = try plan(#"{"model": "m", "steps": 10}"#, schedulerClass: schedulerClass)
        #expect(plan.samplerName == sampler)
        #expect(plan.warnings.isEmpty)
        #expect(plan.resolvedJob["sampler"] as? String == sampler)
    }

    @Test func anUndeclaredClassFallsBackToDDIMWithAWarning() throws {
        let plan = try plan(#"{"model": "m", "steps": 10}"#, schedulerClass: "KDPM2DiscreteScheduler")
        #expect(plan.samplerName == "ddim")
        #expect(plan.warnings == ["the model's scheduler config names KDPM2DiscreteScheduler, which no sampler plugin implements; rendering with ddim"])
        #expect(try self.plan(#"{"model": "m", "steps": 10, "sampler": "euler"}"#, schedulerClass: "KDPM2DiscreteScheduler").warnings.isEmpty)
    }

    /// Heun's 4 steps are 7 evaluations; progress counts steps, and the
    /// evaluations of one step are consecutive.
    @Test func aStepOfSeveralEvaluationsCountsOnce() throws {
        let plan = try plan(#"{"model": "m", "steps": 4, "sampler": "heun"}"#, schedulerClass: "HeunDiscreteScheduler")
        #expect(plan.evaluations.map(\.step) == [0, 0, 1, 1, 2, 2, 3])
        let pndm = try self.plan(#"{"model": "m", "steps": 5}"#, schedulerClass: "PNDMScheduler")
        #expect(pndm.evaluations.count == 5 + 9)
    }

    /// The job's unit noise is scaled by init_noise_sigma, so one init_noise file
    /// serves every sampler.
    @Test func initNoiseIsScaledByTheSamplersSigma() throws {
        let noise = Tensor(shape: [1, 1, 1, 2], scalars: [1, -0.5])
        let gmm = try ModelDirectory(path: "\(TestSupport.fixtures)/gmm").load()
        let job = try Job(json: Data(#"{"model": "gmm", "steps": 10, "sampler": "euler", "beta_schedule": "scaled_linear", "sampler_options": {"beta_start": 0.00085, "beta_end": 0.012}}"#.utf8), source: "job")
        let render = try Render(job: job, model: gmm, registry: TestSupport.registry, runtime: KernelRuntime(threadCount: 1),
                                limits: RenderLimits(), initNoise: noise)
        let sigma: Float = 14.6146  // σ_max of Stable Diffusion's scaled_linear schedule, euler's init_noise_sigma
        #expect(abs(render.sample.data[0] / sigma - 1) < 1e-4 && abs(render.sample.data[1] / sigma + 0.5) < 1e-4)
    }

    /// A learned variance needs a model that returns one; a model that returns
    /// one renders with any sampler (the others ignore it, as diffusers' do).
    @Test func aLearnedVarianceNeedsAModelThatPredictsIt() throws {
        #expect(throws: DiffusionError("sampler ddpm reads a learned variance (variance_type), and this model predicts none (out_channels = in_channels)")) {
            try self.plan(#"{"model": "m", "steps": 10, "sampler": "ddpm", "sampler_options": {"variance_type": "learned_range"}}"#,
                          schedulerClass: "DDPMScheduler")
        }
        let learned = try TestSupport.models.load("unet-tiny-learned", relativeTo: nil)
        #expect(learned.description.predictsVariance)
        for sampler in ["ddim", "dpmsolver++", "ddpm"] {
            let job = try Job(json: Data(#"{"model": "unet-tiny-learned", "sampler": "\#(sampler)", "steps": 6, "count": 2, "seed": 3, "class": 4, "guidance": {"kind": "cfg", "scale": 2}}"#.utf8), source: "job")
            let render = try Render(job: job, model: learned, registry: TestSupport.registry, runtime: KernelRuntime(threadCount: 1),
                                    limits: RenderLimits(), initNoise: nil)
            #expect(try render.run().shape == [2, 1, 8, 8], "\(sampler)")
        }
    }

    /// Evaluations are bounded like steps: Langevin's levels times steps_per_level.
    @Test func aPlanOfTooManyEvaluationsIsRefused() throws {
        #expect(throws: DiffusionError("sampler langevin: 1000 steps take 1000000 model evaluations, over the limit of 20000 (20 per step of the steps limit)")) {
            try self.plan(#"{"model": "m", "steps": 1000, "sampler": "langevin", "sampler_options": {"steps_per_level": 1000}}"#,
                          schedulerClass: "DDPMScheduler")
        }
    }

    /// A ScoreSdeVePipeline directory picks score_sde_ve from its scheduler
    /// class, and its samples are pixels in 0...1 (the PNGs map 0...1 to 0...255).
    @Test func aScorePipelineSamplesInZeroToOne() throws {
        let score = try TestSupport.models.load("unet-tiny-score", relativeTo: nil)
        #expect(score.description.sampleRange == 0...1)
        #expect(try TestSupport.models.load("unet-tiny", relativeTo: nil).description.sampleRange == -1...1)
        let plan = try RenderPlan(job: Job(json: Data(#"{"model": "unet-tiny-score", "steps": 4}"#.utf8), source: "job"),
                                  model: score.description, registry: TestSupport.registry, limits: RenderLimits(), initNoise: nil)
        #expect(plan.samplerName == "score_sde_ve" && plan.evaluations.count == 8)
    }
}
