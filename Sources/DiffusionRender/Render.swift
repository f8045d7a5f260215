import DiffusionKernels
import DiffusionModels
import Foundation

/// One job being rendered: checked against its model, then stepped to the end.
///
/// The loop is diffusers' pipeline loop with the host in charge: the sampler
/// chooses the timesteps, the host evaluates the model (both the conditional and
/// the unconditional pass in one batch when guidance asks for both; an image's
/// output never depends on its batch-mates), the guidance plugin combines the
/// outputs, and the sampler turns them into the next sample.
public final class Render: @unchecked Sendable {
    public let job: Job
    public let model: LoadedModel
    public let samplerName: String
    public let seeds: [UInt64]
    /// Each image's label for the model's conditional pass (the null label when
    /// none was asked; nil for an unconditional model).
    public let labels: [Int]?
    public let levels: NoiseLevels
    public let timesteps: [Int32]
    public internal(set) var sample: Tensor
    public internal(set) var predictedOriginal: Tensor?
    public internal(set) var completedSteps = 0
    /// Seconds spent in the model and in everything else of the steps so far.
    public private(set) var modelSeconds = 0.0
    public private(set) var stepSeconds = 0.0

    let sampler: Sampler
    let guidance: Guidance?
    let generators: [ImageGenerator]
    let classifier: ClassifierContext?
    let runtime: KernelRuntime

    /// Checks `job` against `model` and the plugins, and draws x_T.
    /// `initNoise` is the decoded `init_noise`, when the job has one.
    public init(job: Job, model: LoadedModel, registry: PluginRegistry, runtime: KernelRuntime, limits: RenderLimits,
                initNoise: Tensor?) throws
    {
        let shape = model.denoiser.sampleShape
        let imageValues = shape.reduce(1, *)
        let pixels = shape.dropFirst().reduce(1, *)
        guard job.steps <= limits.maxSteps else { throw RenderError("steps \(job.steps) is over the limit of \(limits.maxSteps)") }
        guard job.count <= limits.maxCount else { throw RenderError("count \(job.count) is over the limit of \(limits.maxCount)") }
        guard pixels <= limits.maxPixels else {
            throw RenderError("images of \(shape.dropFirst().map(String.init).joined(separator: "x")) pixels are over the limit of \(limits.maxPixels) pixels")
        }
        self.job = job
        self.model = model
        self.runtime = runtime

        var schedulerConfig: [String: Any] = [:]
        if let data = model.schedulerConfigData {
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw RenderError("\(model.directory?.schedulerConfigPath ?? "the scheduler config"): not a JSON object")
            }
            schedulerConfig = object
        }
        if let name = job.sampler {
            samplerName = name
        } else {
            switch schedulerConfig["_class_name"] as? String {
            case "DDIMScheduler": samplerName = "ddim"
            case "DDPMScheduler": samplerName = "ddpm"
            default: throw RenderError("the model's scheduler config names no sampler this host knows: give \"sampler\"")
            }
        }
        var overrides = job.samplerOptions.mapValues(\.foundation)
        if let schedule = job.betaSchedule { overrides["beta_schedule"] = schedule }
        if let spacing = job.timestepSpacing { overrides["timestep_spacing"] = spacing }
        let options = ComponentOptions(modelConfig: schedulerConfig, overrides: overrides)
        levels = try NoiseLevels(options: options, registry: registry)
        sampler = try Sampler(name: samplerName, registry: registry, options: options, levels: levels)
        if let unread = options.unreadOverrides.first {
            throw RenderError("sampler_options: \(unread) is not a setting of sampler \(samplerName) or schedule \(levels.schedule)")
        }
        timesteps = try sampler.setTimesteps(job.steps)

        let classCount = model.denoiser.classCount
        if let request = job.guidance {
            var defaults: [String: Any] = [:]
            if request.kind == "cfg", let scale = model.recommendedGuidanceScale { defaults["scale"] = scale }
            let guidanceOptions = ComponentOptions(modelConfig: defaults, overrides: request.options.mapValues(\.foundation))
            let made = try Guidance(name: request.kind, registry: registry, options: guidanceOptions)
            if let unread = guidanceOptions.unreadOverrides.first {
                throw RenderError("guidance: \(unread) is not a setting of \(request.kind)")
            }
            if made.needsConditional && made.needsUnconditional && classCount == nil {
                throw RenderError("guidance \(request.kind) needs a class-conditional model")
            }
            if made.needsClassifier {
                guard let classifier = model.classifier else {
                    throw RenderError("guidance \(request.kind) needs a model directory with a classifier/")
                }
                guard job.classes != nil else { throw RenderError("guidance \(request.kind) needs a class for every image") }
                let prediction = options.value("prediction_type") as? String ?? "epsilon"
                guard prediction == "epsilon" else {
                    throw RenderError("guidance \(request.kind) works in epsilon space; this model predicts \(prediction)")
                }
                self.classifier = ClassifierContext(classifier: classifier, runtime: runtime,
                                                    alphasCumprod: levels.alphasCumprod, sampleShape: shape)
            } else {
                self.classifier = nil
            }
            guidance = made
        } else {
            guidance = nil
            classifier = nil
        }

        // The model's labels; an unconditional model guided by a classifier takes
        // none, and the job's classes are the classifier's.
        if let classes = job.classes {
            if let classCount {
                if let bad = classes.first(where: { $0 >= classCount }) {
                    throw RenderError("class \(bad) is out of range: this model has labels 0...\(classCount - 1)")
                }
                labels = classes
            } else if guidance?.needsClassifier == true {
                labels = nil
            } else {
                throw RenderError("class \(classes[0]): this model is not class-conditional")
            }
        } else {
            labels = model.nullClass.map { [Int](repeating: $0, count: job.count) }
        }

        seeds = job.seeds ?? (0..<job.count).map { _ in UInt64.random(in: 0...UInt64(Int64.max)) }
        generators = seeds.map { ImageGenerator(seed: $0) }
        let batchShape = [job.count] + shape
        if let initNoise {
            guard initNoise.shape == batchShape else {
                throw RenderError("init_noise has shape \(initNoise.shape); this job needs \(batchShape)")
            }
            sample = initNoise
        } else {
            // x_T ~ N(0, I) (init_noise_sigma is 1 for DDPM and DDIM), each image from its own stream.
            sample = Tensor(uninitialized: batchShape)
            for (image, generator) in generators.enumerated() {
                generator.generator.fillNormal(sample.data + image * imageValues, count: imageValues)
            }
        }
    }

    public var isFinished: Bool { completedSteps == timesteps.count }

    /// One step's model evaluation for this render: every pass the guidance asks
    /// for (conditional and null-label copies side by side), at this render's timestep.
    public struct ModelPass {
        public let input: Tensor
        public let timesteps: [Float]
        public let alphasCumprod: [Double]
        public let labels: [Int]?
    }

    /// The model input of the next step.
    public func nextModelPass() -> ModelPass {
        let t = Int(timesteps[completedSteps])
        let count = job.count
        let wantsConditional = guidance?.needsConditional ?? true
        let wantsUnconditional = guidance?.needsUnconditional ?? false
        var passLabels: [Int]?
        if let labels {
            passLabels = (wantsConditional ? labels : []) + (wantsUnconditional ? [Int](repeating: model.nullClass!, count: count) : [])
        }
        let passes = (wantsConditional ? 1 : 0) + (wantsUnconditional && labels != nil ? 1 : 0)
        let input = passes == 2 ? Tensor.stacking([sample, sample]) : sample
        return ModelPass(input: input, timesteps: [Float](repeating: Float(t), count: input.shape[0]),
                         alphasCumprod: [Double](repeating: levels.alphasCumprod[t], count: input.shape[0]), labels: passLabels)
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
        let t = Int(timesteps[completedSteps])
        let count = job.count
        let wantsConditional = guidance?.needsConditional ?? true
        let wantsUnconditional = guidance?.needsUnconditional ?? false
        let passes = output.shape[0] / count
        let conditional = wantsConditional ? (passes == 2 ? output.slice(0..<count) : output) : nil
        let unconditional = wantsUnconditional ? (passes == 2 ? output.slice(count..<(2 * count)) : output) : nil
        let guided = try guidance?.combine(
            sample: sample, conditional: conditional, unconditional: unconditional,
            labels: (job.classes ?? labels ?? [Int](repeating: 0, count: count)).map(Int32.init), timestep: t,
            alphaCumprod: levels.alphasCumprod[t], classifier: classifier) ?? output
        let (previous, original) = try sampler.step(completedSteps, modelOutput: guided, sample: sample, generators: generators)
        sample = previous
        predictedOriginal = original
        completedSteps += 1
        modelSeconds += modelTime
        stepSeconds += modelTime + preparationSeconds + Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    /// Runs every remaining step, calling `progress(done, total)` after each.
    public func run(progress: (Int, Int) -> Void = { _, _ in }) throws -> Tensor {
        while !isFinished {
            try step()
            progress(completedSteps, timesteps.count)
        }
        return sample
    }

    /// The job with every default filled in, as job.json records it.
    public var resolvedJob: [String: Any] {
        var resolved: [String: Any] = [
            "model": job.model, "sampler": samplerName, "sampler_options": job.samplerOptions.mapValues(\.foundation),
            "beta_schedule": levels.schedule, "steps": job.steps, "count": job.count,
            "seed": seeds.map { NSNumber(value: $0) }, "formats": job.formats.map(\.rawValue),
            "priority": job.priority, "preview_every": job.previewEvery, "time_limit": job.timeLimit,
        ]
        resolved["grid_columns"] = job.gridColumns ?? NSNull()
        resolved["timestep_spacing"] = job.timestepSpacing ?? NSNull()
        resolved["class"] = job.classes ?? NSNull()
        if let guidance = job.guidance {
            resolved["guidance"] = guidance.options.mapValues(\.foundation).merging(["kind": guidance.kind]) { $1 }
        } else {
            resolved["guidance"] = NSNull()
        }
        switch job.initNoise {
        case .path(let path)?: resolved["init_noise"] = path
        case .inline?: resolved["init_noise"] = "inline"
        case nil: resolved["init_noise"] = NSNull()
        }
        return resolved
    }
}
