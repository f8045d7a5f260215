import DiffusionKernels
import DiffusionModels
import Foundation

/// One job being rendered: checked against its model, then stepped to the end.
///
/// The loop is diffusers' pipeline loop with the host in charge: the sampler
/// plans its model evaluations (one per step, or more: Heun, a corrector), the
/// host evaluates the model on `scale_model_input(x)` (both the conditional and
/// the unconditional pass in one batch when guidance asks for both; an image's
/// output never depends on its batch-mates), the guidance plugin combines the
/// outputs, and the sampler turns them into the next sample.
public final class Render: @unchecked Sendable {
    public let plan: RenderPlan
    public let model: LoadedModel
    public internal(set) var sample: Tensor
    public internal(set) var predictedOriginal: Tensor?
    /// Model evaluations consumed so far (steps, for samplers of one evaluation a step).
    public internal(set) var completedEvaluations = 0
    /// Seconds spent in the model and in everything else of the steps so far.
    public private(set) var modelSeconds = 0.0
    public private(set) var stepSeconds = 0.0

    let generators: [ImageGenerator]
    let classifier: ClassifierContext?
    let runtime: KernelRuntime
    /// A text model's states for the conditional and the unconditional pass
    /// (the prompts and the negative prompts), encoded once per render.
    let conditionalContext: Tensor?
    let unconditionalContext: Tensor?
    /// A super-resolution model's image input `[count, C, H, W]`: the low-resolution
    /// images resized to the sample's size (pixel space) and noise-augmented.
    public let conditioning: Tensor?

    public var job: Job { plan.job }
    public var seeds: [UInt64] { plan.seeds }
    public var evaluations: [Sampler.Evaluation] { plan.evaluations }
    var sampler: Sampler { plan.sampler }
    var guidance: Guidance? { plan.guidance }
    var labels: [Int]? { plan.labels }

    /// Executes `plan` on `model` (the model the plan was made for, now with its
    /// weights): draws x_T, or takes the plan's `init_noise`. A later stage of a
    /// cascade gets the stage before's images (`lowResolution`, in −1...1); the
    /// augmentation noise is each image's own draw after x_T, or `augmentationNoise`.
    public init(plan: RenderPlan, model: LoadedModel, runtime: KernelRuntime, lowResolution: Tensor? = nil,
                augmentationNoise: Tensor? = nil) throws
    {
        self.plan = plan
        self.model = model
        self.runtime = runtime
        if plan.guidance?.needsClassifier == true {
            guard let classifier = model.classifier else {
                throw DiffusionError("guidance \(plan.guidance!.name) needs a model directory with a classifier/")
            }
            self.classifier = ClassifierContext(classifier: classifier, runtime: runtime,
                                                alphasCumprod: plan.levels.alphasCumprod, sampleShape: plan.sampleShape)
        } else {
            classifier = nil
        }
        generators = plan.seeds.map { ImageGenerator(seed: $0) }
        if let textEncoder = model.textEncoder, let prompts = plan.prompts {
            conditionalContext = try textEncoder.encode(prompts, on: runtime)
            unconditionalContext = plan.guidance?.needsUnconditional == true
                ? try textEncoder.encode(plan.negativePrompts!, on: runtime) : nil
        } else {
            (conditionalContext, unconditionalContext) = (nil, nil)
        }
        // x_T = init_noise_sigma · N(0, I), the unit noise from the job or each image's own stream.
        if let initNoise = plan.initNoise {
            sample = initNoise
        } else {
            let imageValues = plan.sampleShape.reduce(1, *)
            sample = Tensor(uninitialized: [plan.job.count] + plan.sampleShape)
            for (image, generator) in generators.enumerated() {
                generator.generator.fillNormal(sample.data + image * imageValues, count: imageValues)
            }
        }
        conditioning = try Self.conditioning(plan, lowResolution: lowResolution, generators: generators,
                                             noise: augmentationNoise, on: runtime)
        if let image = plan.initImage {
            try startFromImage(image)
        } else if plan.sampler.initNoiseSigma != 1 {
            sample = sample.scaled(by: Float(plan.sampler.initNoiseSigma))
        }
    }

    /// Image-to-image (StableDiffusionImg2ImgPipeline): each image's latents are
    /// a draw of the encoder's Gaussian (its noise from the image's own stream,
    /// after x_T's), times scaling_factor, noised to the first evaluation run:
    /// x = (√ᾱ·z₀ + √(1 − ᾱ)·ε) / input_scale, which is diffusers' add_noise for
    /// samplers in x-space (input_scale 1) and in σ-space (z₀ + σε) alike.
    private func startFromImage(_ image: Tensor) throws {
        guard let autoencoder = model.autoencoder, let latent = model.description.latent else {
            throw DiffusionError("init_image: this model has no image encoder")
        }
        let moments = try autoencoder.encode(image, on: runtime)
        let channels = moments.shape[1] / 2
        let plane = moments.sliceCount / moments.shape[1]
        let size = channels * plane
        let evaluation = evaluations[plan.firstEvaluation]
        let (signal, noise) = (evaluation.alphaCumprod.squareRoot(), (1 - evaluation.alphaCumprod).squareRoot())
        let start = Tensor(uninitialized: sample.shape)
        let draw = Tensor(uninitialized: [size])
        for (index, generator) in generators.enumerated() {
            generator.generator.fillNormal(draw.data, count: size)
            for i in 0..<size {
                let logVariance = Double(min(max(moments.data[size + i], -30), 20))
                let z0 = (Double(moments.data[i]) + Foundation.exp(0.5 * logVariance) * Double(draw.data[i])) * Double(latent.scalingFactor)
                let epsilon = Double(sample.data[index * size + i])
                start.data[index * size + i] = Float((signal * z0 + noise * epsilon) / evaluation.inputScale)
            }
        }
        sample = start
        completedEvaluations = plan.firstEvaluation
    }

    /// The super-resolution input: the images (the stage before's, or the job's
    /// `image` for every image) resized as the pipeline does, then noised to the
    /// augmentation level t: √ᾱ_t·x + √(1 − ᾱ_t)·ε, diffusers' add_noise.
    private static func conditioning(_ plan: RenderPlan, lowResolution: Tensor?, generators: [ImageGenerator],
                                     noise: Tensor?, on runtime: KernelRuntime) throws -> Tensor?
    {
        guard let superResolution = plan.model.superResolution else { return nil }
        let count = plan.job.count
        guard var images = lowResolution ?? plan.conditioningImage.map({ image in Tensor.stacking([Tensor](repeating: image, count: count)) }),
              images.shape == [count] + plan.conditioningShape!
        else { throw DiffusionError("a super-resolution stage without its \(plan.conditioningShape ?? []) images") }
        if let mode = superResolution.upsample {
            images = runtime.resize(images, height: plan.sampleShape[1], width: plan.sampleShape[2], mode: mode)
        }
        guard let alpha = plan.augmentationAlphaCumprod else { return images }
        if let noise, noise.shape != images.shape {
            throw DiffusionError("augmentation noise has shape \(noise.shape); this stage needs \(images.shape)")
        }
        let (signal, spread) = (alpha.squareRoot(), (1 - alpha).squareRoot())
        let size = images.sliceCount
        let draw = Tensor(uninitialized: [size])
        let augmented = Tensor(uninitialized: images.shape)
        for (index, generator) in generators.enumerated() {
            let epsilon = noise.map { $0.data + index * size } ?? draw.data
            if noise == nil { generator.generator.fillNormal(draw.data, count: size) }
            for i in 0..<size {
                augmented.data[index * size + i] = Float(signal * Double(images.data[index * size + i]) + spread * Double(epsilon[i]))
            }
        }
        return augmented
    }

    /// Plans `job` for `model` and executes the plan: `diffusiond render`, tests, benchmarks.
    public convenience init(job: Job, model: LoadedModel, registry: PluginRegistry, runtime: KernelRuntime,
                            limits: RenderLimits, initNoise: Tensor?) throws
    {
        try self.init(plan: RenderPlan(job: job, model: model.description, registry: registry, limits: limits,
                                       initNoise: initNoise),
                      model: model, runtime: runtime)
    }

    public var isFinished: Bool { completedEvaluations == evaluations.count }

    /// The job's steps, and those whose every evaluation is done.
    public var totalSteps: Int { plan.job.steps }
    public var completedSteps: Int { isFinished ? totalSteps : evaluations[completedEvaluations].step }

    /// Whether the last evaluation ended a step (progress, previews and
    /// checkpoints happen at step boundaries).
    public var endedStep: Bool {
        completedEvaluations > 0 && (isFinished || evaluations[completedEvaluations].step != evaluations[completedEvaluations - 1].step)
    }

    /// The next model evaluation of this render: every pass the guidance asks
    /// for (conditional and null-label copies side by side) of the scaled sample,
    /// at the evaluation's time input.
    public struct ModelPass {
        public let input: Tensor
        public let timesteps: [Float]
        public let alphasCumprod: [Double]
        public let labels: [Int]?
        /// Each image's text states, for a text-conditioned model.
        public let context: Tensor?
    }

    /// The model input of the next evaluation.
    public func nextModelPass() -> ModelPass {
        let evaluation = evaluations[completedEvaluations]
        let count = job.count
        let wantsConditional = guidance?.needsConditional ?? true
        let wantsUnconditional = guidance?.needsUnconditional ?? false
        var passLabels: [Int]?
        if let labels {
            passLabels = (wantsConditional ? labels : []) + (wantsUnconditional ? [Int](repeating: model.description.nullClass!, count: count) : [])
        }
        let contexts = [wantsConditional ? conditionalContext : nil, wantsUnconditional ? unconditionalContext : nil].compactMap { $0 }
        let passes = (wantsConditional ? 1 : 0) + (wantsUnconditional && (labels != nil || unconditionalContext != nil) ? 1 : 0)
        var scaled = scaledSample(evaluation)
        if let conditioning, let superResolution = model.description.superResolution {
            // the U-Net reads [sample, image]; LDMSuperResolutionPipeline scales both
            scaled = superResolution.scalesImage && evaluation.inputScale != 1
                ? Tensor.concatenatingChannels(scaled, conditioning.scaled(by: Float(evaluation.inputScale)))
                : Tensor.concatenatingChannels(scaled, conditioning)
            if let level = plan.noiseLevel, superResolution.augmentation?.levelIsClassInput == true {
                passLabels = [Int](repeating: level, count: count * passes)
            }
        }
        let input = passes == 2 ? Tensor.stacking([scaled, scaled]) : scaled
        return ModelPass(input: input, timesteps: [Float](repeating: Float(evaluation.time), count: input.shape[0]),
                         alphasCumprod: [Double](repeating: evaluation.alphaCumprod, count: input.shape[0]), labels: passLabels,
                         context: contexts.isEmpty ? nil : contexts.count == 1 ? contexts[0] : Tensor.stacking(contexts))
    }

    /// diffusers' scale_model_input: the sample as the model sees it.
    func scaledSample(_ evaluation: Sampler.Evaluation) -> Tensor {
        evaluation.inputScale == 1 ? sample : sample.scaled(by: Float(evaluation.inputScale))
    }

    /// Runs the next step: 1. the model on `nextModelPass()`, 2. guidance, 3. the sampler.
    public func step() throws {
        if let failure = try RenderBatch.step([self], on: runtime)[0] { throw failure }
    }

    /// Steps 2 and 3 of a step whose model output (for `nextModelPass()`) was
    /// computed elsewhere (`RenderBatch`); the seconds are this render's share of
    /// the model call and of preparing its input.
    func finishStep(modelOutput output: Tensor, modelSeconds modelTime: Double, preparationSeconds: Double) throws {
        let start = DispatchTime.now().uptimeNanoseconds
        let evaluation = evaluations[completedEvaluations]
        let count = job.count
        let wantsConditional = guidance?.needsConditional ?? true
        let wantsUnconditional = guidance?.needsUnconditional ?? false
        let passes = output.shape[0] / count
        // A model that predicts its variance returns it after its output (diffusers'
        // split): guidance combines the outputs, the variance is the first pass's.
        let channels = sample.shape[1]
        let (prediction, variance) = model.description.predictsVariance
            ? (output.slicingChannels(0..<channels), output.slicingChannels(channels..<(2 * channels)).slice(0..<count))
            : (output, nil)
        let conditional = wantsConditional ? (passes == 2 ? prediction.slice(0..<count) : prediction) : nil
        let unconditional = wantsUnconditional ? (passes == 2 ? prediction.slice(count..<(2 * count)) : prediction) : nil
        let guided = try guidance.map { guidance in
            try guidance.combine(
                sample: scaledSample(evaluation), conditional: conditional, unconditional: unconditional,
                labels: (job.classes ?? labels ?? [Int](repeating: 0, count: count)).map(Int32.init),
                timestep: Int(evaluation.time.rounded()), alphaCumprod: evaluation.alphaCumprod, classifier: classifier)
        } ?? prediction
        let stepOutput = evaluation.modelVariance ? Tensor.concatenatingChannels(guided, variance!) : guided
        let (previous, original) = try sampler.step(completedEvaluations, modelOutput: stepOutput, sample: sample, generators: generators)
        // A diverging setting (a huge guidance scale, a degenerate schedule) ends
        // the job here with a reason; a NaN must never reach the output files.
        guard previous.isFinite else {
            throw DiffusionError("step \(evaluation.step + 1) of \(totalSteps) produced values that are not finite (NaN or infinity): the guidance scale or sampler_options diverge")
        }
        sample = previous
        predictedOriginal = original
        completedEvaluations += 1
        modelSeconds += modelTime
        stepSeconds += modelTime + preparationSeconds + Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    /// Runs every remaining evaluation, calling `progress(done, total)` after
    /// each step; returns the final sample (a latent model's latents).
    @discardableResult
    public func run(progress: (Int, Int) -> Void = { _, _ in }) throws -> Tensor {
        while !isFinished {
            try step()
            if endedStep { progress(completedSteps, totalSteps) }
        }
        return sample
    }

    /// The images of `samples` (the final sample, or a preview's x̂₀): a latent
    /// model's decoded one image at a time, as diffusers' pipelines decode
    /// `latents / scaling_factor`, before any clamping; other models' as they are.
    public func images(of samples: Tensor) throws -> Tensor {
        guard let autoencoder = model.autoencoder, let latent = model.description.latent else { return samples }
        return Tensor.stacking(try (0..<samples.shape[0]).map { image in
            try autoencoder.decode(samples.slice(image..<(image + 1)).scaled(by: 1 / latent.scalingFactor), on: runtime)
        })
    }
}
