import DiffusionKernels
import DiffusionModels
import Foundation

/// A job checked against a model and the plugins, with every setting resolved:
/// what the render loop executes. It reads the model's configs, never its
/// weights, so the daemon plans every job at admission and refuses, with the one
/// line this gives, a job that could not render; `--dry-run` prints it.
///
/// The checks: the limits; the sampler (the job's, or the one the model's
/// scheduler config names), the noise schedule and every `sampler_options` key
/// read by one of them; the guidance and its options; labels within the model's
/// classes; `init_noise` of the job's shape; outputs the sample shape can fill.
public final class RenderPlan: @unchecked Sendable {
    public let job: Job
    public let model: ModelDescription
    public let samplerName: String
    public let seeds: [UInt64]
    /// Each image's label for the model's conditional pass (the null label when
    /// none was asked; nil for an unconditional model).
    public let labels: [Int]?
    public let levels: NoiseLevels
    /// Every model evaluation the sampler planned, in order.
    public let evaluations: [Sampler.Evaluation]
    /// What the job should know but that does not stop it (a sampler fallback).
    public let warnings: [String]
    let sampler: Sampler
    let guidance: Guidance?
    /// The guidance options in force: the job's over the model's defaults.
    public let guidanceOptions: [String: Any]
    /// The decoded `init_noise`, when the job has one.
    let initNoise: Tensor?
    /// One sample's shape for this job's size (for a latent model, its latents').
    public let sampleShape: [Int]
    /// The prompts of a text-conditioned model's conditional and unconditional
    /// passes (the negative prompts default to the empty one, as diffusers').
    public let prompts: [String]?
    public let negativePrompts: [String]?
    /// The guidance method in force: the job's, or CFG for a text model.
    public let guidanceKind: String?
    /// Image-to-image: the encoder's input `[1, C, H, W]` in −1...1, and the first
    /// evaluation run (the steps before it are the part of the schedule the
    /// image stands for: diffusers' `int(steps · strength)` last steps are run).
    public let initImage: Tensor?
    public let firstEvaluation: Int
    /// A super-resolution model's low-resolution input: the job's `image` as
    /// `[1, C, h, w]` in −1...1 (nil for a later stage, which reads the stage
    /// before), its shape `[C, h, w]`, and the augmentation level and its ᾱ.
    public let conditioningImage: Tensor?
    public let conditioningShape: [Int]?
    public let noiseLevel: Int?
    let augmentationAlphaCumprod: Double?

    /// The guidance scale of text-conditioned models without a
    /// recommended_guidance_scale, diffusers' StableDiffusionPipeline default.
    public static let textGuidanceScale = 7.5

    /// The sampler of a model whose scheduler class no plugin declares.
    public static let fallbackSampler = "ddim"

    /// The channel counts a PNG holds: grey, grey+alpha, RGB, RGBA.
    public static let pngChannels = 1...4

    /// `previousStage`: the shape `[C, H, W]` of the images of the stage before,
    /// for a later stage of a cascade.
    public init(job: Job, model: ModelDescription, registry: PluginRegistry, limits: RenderLimits,
                initNoise: Tensor?, previousStage: [Int]? = nil) throws
    {
        var size = [job.height ?? model.defaultImageSize[0], job.width ?? model.defaultImageSize[1]]
        var conditioningImage: Tensor?
        var conditioningShape = previousStage
        if let source = job.image {
            guard let superResolution = model.superResolution else {
                throw DiffusionError("image: this model does not upscale images (a super-resolution model does; image-to-image takes init_image)")
            }
            let image = try Self.readImage(source, key: "image")
            conditioningImage = Self.encoderInput(image, channels: superResolution.imageChannels)
            conditioningShape = [superResolution.imageChannels, image.height, image.width]
        }
        if let superResolution = model.superResolution {
            guard let shape = conditioningShape else {
                throw DiffusionError("this model upscales an image: give \"image\", or make it a later stage of a cascade")
            }
            guard shape[0] == superResolution.imageChannels else {
                throw DiffusionError("this model upscales \(superResolution.imageChannels)-channel images, and the stage before makes \(shape[0])-channel ones")
            }
            if superResolution.upsample == nil {
                // latent super-resolution: the latents are the image's size
                let factor = model.latent?.factor ?? 1
                let upscaled = [shape[1] * factor, shape[2] * factor]
                if (job.height != nil && job.height != upscaled[0]) || (job.width != nil && job.width != upscaled[1]) {
                    throw DiffusionError("this model upscales \(shape[2])x\(shape[1]) to \(upscaled[1])x\(upscaled[0]): leave out width and height")
                }
                size = upscaled
            }
        } else if conditioningShape != nil {
            throw DiffusionError("a later stage of a cascade must be a super-resolution model; this one takes no image")
        }
        self.conditioningImage = conditioningImage
        self.conditioningShape = conditioningShape
        var initImage: Tensor?
        if let source = job.initImage {
            guard let channels = model.latent?.encoderChannels else {
                throw DiffusionError("init_image: this model has no image encoder (image-to-image needs an AutoencoderKL, as StableDiffusionPipeline's)")
            }
            let image = try Self.readImage(source, key: "init_image")
            if (job.width != nil && job.width != image.width) || (job.height != nil && job.height != image.height) {
                throw DiffusionError("init_image is \(image.width)x\(image.height): leave out width and height, or give its own")
            }
            size = [image.height, image.width]
            initImage = Self.encoderInput(image, channels: channels)
        }
        self.initImage = initImage
        if let multiple = model.sizeMultiple {
            guard size.allSatisfy({ $0 % multiple == 0 }) else {
                throw DiffusionError("width and height must be multiples of \(multiple) pixels for this model, not \(size[1])x\(size[0])")
            }
        } else if size != model.defaultImageSize {
            throw DiffusionError("this model renders \(model.defaultImageSize[1])x\(model.defaultImageSize[0]) images only: leave out width and height")
        }
        let factor = model.latent?.factor ?? 1
        let shape = [model.sampleShape[0], size[0] / factor, size[1] / factor]
        sampleShape = shape
        let pixels = size[0] * size[1]
        guard job.steps <= limits.maxSteps else { throw DiffusionError("steps \(job.steps) is over the limit of \(limits.maxSteps)") }
        guard job.count <= limits.maxCount else { throw DiffusionError("count \(job.count) is over the limit of \(limits.maxCount)") }
        guard pixels <= limits.maxPixels else {
            throw DiffusionError("images of \(size[1])x\(size[0]) pixels are over the limit of \(limits.maxPixels) pixels")
        }
        if job.formats.contains(.png), !Self.pngChannels.contains(model.imageChannels) {
            throw DiffusionError("this model's images have \(model.imageChannels) channels and a PNG holds 1 to 4: ask for \"formats\": [\"npy\"]")
        }
        if job.formats.contains(.latents), model.latent == nil {
            throw DiffusionError("format latents: this model samples images, not latents (ask for \"npy\")")
        }
        if model.text != nil {
            guard let prompts = job.prompts else { throw DiffusionError("this model is text-conditioned: give \"prompt\"") }
            self.prompts = prompts
            negativePrompts = job.negativePrompts ?? [String](repeating: "", count: job.count)
        } else {
            if job.prompts != nil || job.negativePrompts != nil {
                throw DiffusionError("this model is not text-conditioned: it takes no prompt")
            }
            (prompts, negativePrompts) = (nil, nil)
        }
        self.job = job
        self.model = model

        var schedulerConfig: [String: Any] = [:]
        if let data = model.schedulerConfigData {
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw DiffusionError("\(model.schedulerConfigSource): not a JSON object")
            }
            schedulerConfig = object
        }
        // The default sampler is the one that declares the config's scheduler class.
        var warnings: [String] = []
        if let name = job.sampler {
            samplerName = name
        } else if let className = schedulerConfig["_class_name"] as? String, let name = registry.samplerClasses[className] {
            samplerName = name
        } else {
            let className = schedulerConfig["_class_name"] as? String ?? "no scheduler class"
            guard registry.samplers[Self.fallbackSampler] != nil else {
                throw DiffusionError("the model's scheduler config names \(className), which no sampler plugin implements: give \"sampler\"")
            }
            samplerName = Self.fallbackSampler
            warnings.append("the model's scheduler config names \(className), which no sampler plugin implements; rendering with \(Self.fallbackSampler)")
        }
        self.warnings = warnings
        var overrides = job.samplerOptions.mapValues(\.foundation)
        if let schedule = job.betaSchedule { overrides["beta_schedule"] = schedule }
        if let spacing = job.timestepSpacing { overrides["timestep_spacing"] = spacing }
        let options = ComponentOptions(modelConfig: schedulerConfig, overrides: overrides)
        levels = try NoiseLevels(options: options, registry: registry)
        sampler = try Sampler(name: samplerName, registry: registry, options: options, levels: levels)
        if let unread = options.unreadOverrides.first {
            throw DiffusionError("sampler_options: \(unread) is not a setting of sampler \(samplerName) or schedule \(levels.schedule)")
        }
        try sampler.setTimesteps(job.steps, maxEvaluations: limits.maxEvaluations)
        evaluations = sampler.evaluations
        if initImage != nil {
            // StableDiffusionImg2ImgPipeline: the last int(steps · strength) steps
            let strength = job.strength ?? Job.defaultStrength
            let run = min(Int(Double(job.steps) * strength), job.steps)
            guard run > 0 else {
                throw DiffusionError("strength \(strength) of \(job.steps) steps runs no step: raise strength or steps")
            }
            firstEvaluation = evaluations.firstIndex { $0.step >= job.steps - run }!
        } else {
            firstEvaluation = 0
        }
        if evaluations.contains(where: \.modelVariance), !model.predictsVariance {
            throw DiffusionError("sampler \(samplerName) reads a learned variance (variance_type), and this model predicts none (out_channels = in_channels)")
        }

        let classCount = model.classCount
        // A text model is guided by CFG unless the job says otherwise, as diffusers' pipelines are.
        if let request = job.guidance ?? (model.text != nil ? Job.Guidance(kind: "cfg", options: [:]) : nil) {
            var defaults: [String: Any] = [:]
            if request.kind == "cfg", let scale = model.recommendedGuidanceScale ?? (model.text != nil ? Self.textGuidanceScale : nil) {
                defaults["scale"] = scale
            }
            self.guidanceOptions = defaults.merging(request.options.mapValues(\.foundation)) { $1 }
            let guidanceOptions = ComponentOptions(modelConfig: defaults, overrides: request.options.mapValues(\.foundation))
            let made = try Guidance(name: request.kind, registry: registry, options: guidanceOptions)
            if let unread = guidanceOptions.unreadOverrides.first {
                throw DiffusionError("guidance: \(unread) is not a setting of \(request.kind)")
            }
            if made.needsConditional && made.needsUnconditional && classCount == nil && model.text == nil {
                throw DiffusionError("guidance \(request.kind) needs a class- or text-conditioned model")
            }
            if made.needsClassifier {
                guard model.hasClassifier else {
                    throw DiffusionError("guidance \(request.kind) needs a model directory with a classifier/")
                }
                guard job.classes != nil else { throw DiffusionError("guidance \(request.kind) needs a class for every image") }
                let prediction = options.value("prediction_type") as? String ?? "epsilon"
                guard prediction == "epsilon" else {
                    throw DiffusionError("guidance \(request.kind) works in epsilon space; this model predicts \(prediction)")
                }
            }
            guidance = made
            guidanceKind = request.kind
        } else {
            guidance = nil
            guidanceOptions = [:]
            guidanceKind = nil
        }

        // The model's labels; an unconditional model guided by a classifier takes
        // none, and the job's classes are the classifier's.
        if let classes = job.classes {
            if let classCount {
                if let bad = classes.first(where: { $0 >= classCount }) {
                    throw DiffusionError("class \(bad) is out of range: this model has labels 0...\(classCount - 1)")
                }
                labels = classes
            } else if guidance?.needsClassifier == true {
                labels = nil
            } else {
                throw DiffusionError("class \(classes[0]): this model is not class-conditional")
            }
        } else {
            labels = model.nullClass.map { [Int](repeating: $0, count: job.count) }
        }

        if let initNoise, initNoise.shape != [job.count] + shape {
            throw DiffusionError("init_noise has shape \(initNoise.shape); this job needs \([job.count] + shape)")
        }
        self.initNoise = initNoise
        let augmentation = try Self.augmentation(job, model, registry: registry)
        (noiseLevel, augmentationAlphaCumprod) = (augmentation?.0, augmentation?.1)
        seeds = job.seeds ?? (0..<job.count).map { _ in UInt64.random(in: 0...UInt64(Int64.max)) }
    }

    static func readImage(_ source: Job.InitImage, key: String) throws -> PNGFile.Image {
        do {
            switch source {
            case .path(let path): return try PNGFile.read(path: path)
            case .inline(let bytes): return try PNGFile.read(data: bytes)
            }
        } catch let error as DiffusionError {
            throw DiffusionError("\(key): \(error.message)")
        }
    }

    /// The augmentation level of a super-resolution model (the job's, else the
    /// model's `noise_level`) and its ᾱ in the schedule the image is noised with.
    static func augmentation(_ job: Job, _ model: ModelDescription, registry: PluginRegistry) throws -> (Int, Double)? {
        guard let augmentation = model.superResolution?.augmentation else {
            if job.noiseLevel != nil {
                throw DiffusionError(model.superResolution == nil
                    ? "noise_level: this model is not a super-resolution model"
                    : "noise_level: this model reads its image without noise augmentation")
            }
            return nil
        }
        var config: [String: Any] = [:]
        if let data = augmentation.schedulerConfigData {
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw DiffusionError("\(augmentation.schedulerConfigSource): not a JSON object")
            }
            config = object
        }
        let levels = try NoiseLevels(options: ComponentOptions(modelConfig: config, overrides: [:]), registry: registry)
        let level = job.noiseLevel ?? augmentation.defaultLevel
        let maximum = min(augmentation.maxLevel ?? Int.max, levels.trainSteps - 1)
        guard (0...maximum).contains(level) else {
            throw DiffusionError("noise_level \(level) is outside 0...\(maximum) for this model")
        }
        return (level, levels.alphasCumprod[level])
    }

    /// 8-bit samples to −1...1 `[1, channels, H, W]`, as diffusers' image processor
    /// normalizes them: grey copied to every channel, colour to grey by Rec. 601
    /// luma, alpha dropped.
    static func encoderInput(_ image: PNGFile.Image, channels: Int) -> Tensor {
        let plane = image.width * image.height
        let tensor = Tensor(uninitialized: [1, channels, image.height, image.width])
        let colour = image.channels >= 3
        for pixel in 0..<plane {
            let base = pixel * image.channels
            let sample = { (c: Int) in Float(image.pixels[base + c]) / 127.5 - 1 }
            for c in 0..<channels {
                let value: Float
                if channels >= 3 && colour { value = sample(min(c, 2)) }
                else if colour { value = 0.299 * sample(0) + 0.587 * sample(1) + 0.114 * sample(2) }
                else { value = sample(0) }
                tensor.data[c * plane + pixel] = value
            }
        }
        return tensor
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
        if let guidanceKind {
            resolved["guidance"] = guidanceOptions.merging(["kind": guidanceKind]) { $1 }
        } else {
            resolved["guidance"] = NSNull()
        }
        switch job.initImage {
        case .path(let path)?: resolved["init_image"] = path
        case .inline?: resolved["init_image"] = "inline"
        case nil: resolved["init_image"] = NSNull()
        }
        switch job.image {
        case .path(let path)?: resolved["image"] = path
        case .inline?: resolved["image"] = "inline"
        case nil: resolved["image"] = NSNull()
        }
        resolved["noise_level"] = noiseLevel ?? NSNull()
        resolved["strength"] = job.initImage != nil ? job.strength ?? Job.defaultStrength : NSNull()
        resolved["prompt"] = prompts ?? NSNull()
        resolved["negative_prompt"] = negativePrompts ?? NSNull()
        resolved["width"] = sampleShape[2] * (model.latent?.factor ?? 1)
        resolved["height"] = sampleShape[1] * (model.latent?.factor ?? 1)
        switch job.initNoise {
        case .path(let path)?: resolved["init_noise"] = path
        case .inline?: resolved["init_noise"] = "inline"
        case nil: resolved["init_noise"] = NSNull()
        }
        return resolved
    }
}
