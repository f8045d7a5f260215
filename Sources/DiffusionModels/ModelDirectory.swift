import DiffusionKernels
import Foundation

/// A diffusers model directory, in either layout published checkpoints use:
///
/// - pipeline: `model_index.json`, `unet/config.json`,
///   `unet/diffusion_pytorch_model.safetensors`, `scheduler/scheduler_config.json`;
/// - flat (e.g. google/ddpm-cifar10-32): `config.json`,
///   `diffusion_pytorch_model.safetensors`, `scheduler_config.json` at the root.
public struct ModelDirectory: Sendable {
    public enum Layout: String, Sendable { case pipeline, flat }

    public let path: String
    public let layout: Layout

    public init(path: String) throws {
        self.path = path
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DiffusionError("\(path): no such model directory")
        }
        if fm.fileExists(atPath: "\(path)/model_index.json")
            && (fm.fileExists(atPath: "\(path)/unet/config.json") || fm.fileExists(atPath: "\(path)/gmm.json"))
        {
            layout = .pipeline
        } else if fm.fileExists(atPath: "\(path)/config.json") {
            layout = .flat
        } else {
            throw DiffusionError("\(path): not a model directory (no model_index.json with unet/ or gmm.json, nor config.json)")
        }
    }

    private var unetDirectory: String { layout == .pipeline ? "\(path)/unet" : path }
    public var unetConfigPath: String { "\(unetDirectory)/config.json" }
    public var schedulerConfigPath: String {
        layout == .pipeline ? "\(path)/scheduler/scheduler_config.json" : "\(path)/scheduler_config.json"
    }

    public func loadUNetConfig() throws -> UNet2DConfig {
        guard let data = FileManager.default.contents(atPath: unetConfigPath) else {
            throw DiffusionError("\(unetConfigPath): cannot read")
        }
        return try UNet2DConfig(json: data, source: unetConfigPath)
    }

    public func loadUNet() throws -> UNet2DModel {
        let config = try loadUNetConfig()
        return try UNet2DModel(config: config, weights: try WeightFiles.open(unetDirectory, "diffusion_pytorch_model"))
    }

    /// model_index.json as a dictionary (empty for the flat layout).
    public func modelIndex() throws -> [String: Any] {
        guard layout == .pipeline else { return [:] }
        guard let data = FileManager.default.contents(atPath: "\(path)/model_index.json"),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { throw DiffusionError("\(path)/model_index.json: not a JSON object") }
        return object
    }

    /// What a component class is to the render loop.
    enum Role: Sendable { case denoiser, autoencoder, textEncoder, tokenizer, scheduler, augmentationScheduler }

    /// The component classes this host reads, by their `model_index.json` class.
    static let componentRoles: [String: Role] = [
        "UNet2DModel": .denoiser, "UNet2DConditionModel": .denoiser,
        "AutoencoderKL": .autoencoder, "VQModel": .autoencoder,
        "CLIPTextModel": .textEncoder, "CLIPTokenizer": .tokenizer, "CLIPTokenizerFast": .tokenizer,
    ]

    /// One pipeline class as this host renders it: the components it reads and
    /// the classes each may be (empty: any, the scheduler's class picks a sampler
    /// instead), the components it skips (a safety checker: this host renders
    /// what it is asked and says so in the log), and its samples' pixel range.
    /// A super-resolution pipeline says how it feeds its conditioning image.
    struct Pipeline {
        let components: [String: Set<String>]
        var optional: Set<String> = []
        var skipped: Set<String> = []
        var sampleRange: ClosedRange<Float> = -1...1
        /// Whether the decoder reads latents / scaling_factor (LDMSuperResolutionPipeline decodes them as they are).
        var decodesScaledLatents = true
        var superResolution: SuperResolutionStyle?
    }

    /// How a super-resolution pipeline conditions its U-Net on the low-resolution image.
    struct SuperResolutionStyle {
        /// Pixel space: the image is resized to the sample's size (by model_index.json's
        /// `upsample`); false: it is the latents' size already.
        var resizes = false
        /// LDMSuperResolutionPipeline passes [sample, image] through scale_model_input together.
        var scalesImage = false
        /// The image is noised to `noise_level` first (CDM's conditioning augmentation).
        var augments = true
        /// The sample's channels: half the U-Net's input, or the autoencoder's latents'.
        var sampleChannelsFromAutoencoder = false
    }

    /// The pipelines this host renders, by model_index.json's `_class_name`. A
    /// directory naming another pipeline, or a component its pipeline does not
    /// read, is refused at load: rendering part of a pipeline would write wrong
    /// images without an error.
    static let pipelines: [String: Pipeline] = [
        "DDPMPipeline": Pipeline(components: ["unet": ["UNet2DModel"], "scheduler": []]),
        "DDIMPipeline": Pipeline(components: ["unet": ["UNet2DModel"], "scheduler": []]),
        // Song et al.'s score models sample images in [0, 1]
        "ScoreSdeVePipeline": Pipeline(components: ["unet": ["UNet2DModel"], "scheduler": []], sampleRange: 0...1),
        "GaussianMixture": Pipeline(components: ["scheduler": []]),
        "StableDiffusionPipeline": Pipeline(
            components: ["unet": ["UNet2DConditionModel"], "vae": ["AutoencoderKL"], "text_encoder": ["CLIPTextModel"],
                         "tokenizer": ["CLIPTokenizer", "CLIPTokenizerFast"], "scheduler": []],
            skipped: ["safety_checker", "feature_extractor", "image_encoder"]),
        "LDMPipeline": Pipeline(components: ["vqvae": ["VQModel"], "unet": ["UNet2DModel"], "scheduler": []]),
        // diffusiond's own: a cascade's pixel-space stage (CDM, IF), a UNet2DModel
        // reading the noisy sample beside the upsampled, noise-augmented image
        "PixelSuperResolutionPipeline": Pipeline(
            components: ["unet": ["UNet2DModel"], "scheduler": [], "low_res_scheduler": []], optional: ["low_res_scheduler"],
            superResolution: SuperResolutionStyle(resizes: true)),
        "LDMSuperResolutionPipeline": Pipeline(
            components: ["vqvae": ["VQModel"], "unet": ["UNet2DModel"], "scheduler": []], decodesScaledLatents: false,
            superResolution: SuperResolutionStyle(scalesImage: true, augments: false)),
        "StableDiffusionUpscalePipeline": Pipeline(
            components: ["unet": ["UNet2DConditionModel"], "vae": ["AutoencoderKL"], "text_encoder": ["CLIPTextModel"],
                         "tokenizer": ["CLIPTokenizer", "CLIPTokenizerFast"], "scheduler": [], "low_res_scheduler": []],
            skipped: ["safety_checker", "feature_extractor", "watermarker"],
            superResolution: SuperResolutionStyle(sampleChannelsFromAutoencoder: true)),
    ]

    /// Components whose role is their key's, not their class's.
    static let keyRoles: [String: Role] = ["low_res_scheduler": .augmentationScheduler]

    /// A pipeline's components as the directory names them: each key's class
    /// and role, and the notes for the ones skipped.
    struct Components {
        let pipeline: String
        var roles: [Role: (key: String, className: String)] = [:]
        var notes: [String] = []

        func directory(_ role: Role, in path: String) -> String? { roles[role].map { "\(path)/\($0.key)" } }
    }

    /// The pipeline class and its components, checked against `pipelines`
    /// (a flat directory is a U-Net and its scheduler, as DDPMPipeline).
    func checkedPipeline(_ index: [String: Any]) throws -> Components {
        guard layout == .pipeline else {
            return Components(pipeline: "DDPMPipeline", roles: [.denoiser: (".", "UNet2DModel")])
        }
        let source = "\(path)/model_index.json"
        guard let name = index["_class_name"] as? String else { throw DiffusionError("\(source): no \"_class_name\"") }
        guard let pipeline = Self.pipelines[name] else {
            throw DiffusionError("\(source): pipeline \(name) is not supported (supported: \(Self.pipelines.keys.sorted().joined(separator: ", ")))")
        }
        var found = Components(pipeline: name)
        // Components are the entries ["library", "Class"]; [null, null] marks one left out.
        for (key, value) in index.sorted(by: { $0.key < $1.key }) where !key.hasPrefix("_") {
            guard let entry = value as? [Any], entry.count == 2 else { continue }
            if entry.allSatisfy({ $0 is NSNull }) { continue }
            let className = entry[1] as? String ?? "?"
            if pipeline.skipped.contains(key) {
                found.notes.append("\(path): \(key) (\(className)) is not run by this host; images are not filtered")
                continue
            }
            guard let allowed = pipeline.components[key] else {
                throw DiffusionError("\(source): component \(key) (\(className)) is not supported in a \(name) (this host reads \(pipeline.components.keys.sorted().joined(separator: " + ")))")
            }
            if !allowed.isEmpty && !allowed.contains(className) {
                throw DiffusionError("\(source): component \(key) is a \(className); a \(name) here needs \(allowed.sorted().joined(separator: " or "))")
            }
            found.roles[Self.keyRoles[key] ?? Self.componentRoles[className] ?? .scheduler] = (key, className)
        }
        if let missing = pipeline.components.keys.sorted().first(where: { key in !found.roles.values.contains { $0.key == key } }),
           missing != "scheduler", !pipeline.optional.contains(missing)
        {
            throw DiffusionError("\(source): a \(name) needs its \(missing) component")
        }
        return found
    }

    /// What a render plan needs to know of the model, from its configs alone:
    /// cheap enough to check every job at admission, before any weight is read.
    public func describe() throws -> ModelDescription {
        let index = try modelIndex()
        return try describe(index: index, components: try checkedPipeline(index))
    }

    /// A denoiser's config, by its class.
    private func denoiserConfig(_ components: Components) throws -> any DenoiserConfig {
        let directory = components.directory(.denoiser, in: path) ?? path
        let className = components.roles[.denoiser]?.className ?? "UNet2DModel"
        return try WeightFiles.config(directory, Self.denoiserConfigs[className]!)
    }

    /// Each denoiser class's config parser.
    static let denoiserConfigs: [String: @Sendable (Data, String) throws -> any DenoiserConfig] = [
        "UNet2DModel": { try UNet2DConfig(json: $0, source: $1) },
        "UNet2DConditionModel": { try UNet2DConditionConfig(json: $0, source: $1) },
    ]

    private func describe(index: [String: Any], components: Components) throws -> ModelDescription {
        var sampleShape: [Int]
        var classCount: Int?
        var predictsVariance = false
        var latent: LatentSpace?
        var text: TextConditioning?
        var sizeMultiple: Int?
        var superResolution: SuperResolution?
        let pipeline = Self.pipelines[components.pipeline]
        if components.pipeline == "GaussianMixture" {
            let mixture = try loadMixture()
            (sampleShape, classCount) = (mixture.sampleShape, mixture.classCount)
        } else {
            let config = try denoiserConfig(components)
            (classCount, sizeMultiple) = (config.classCount, config.downsamplingFactor)
            let autoencoder = try components.directory(.autoencoder, in: path).map { try WeightFiles.config($0, AutoencoderConfig.init) }
            var inChannels = config.sampleShape[0]
            if let style = pipeline?.superResolution {
                // the U-Net reads [sample, image]: the sample's channels are half its input, or the latents'
                let sampleChannels = style.sampleChannelsFromAutoencoder ? autoencoder!.latentChannels : inChannels / 2
                guard sampleChannels > 0, sampleChannels < inChannels else {
                    throw DiffusionError("\(path): a super-resolution U-Net reads the sample and the image: in_channels \(inChannels) is too few")
                }
                superResolution = try describeSuperResolution(style, index: index, components: components, config: config,
                                                              imageChannels: inChannels - sampleChannels)
                inChannels = sampleChannels
                // the conditioning's class input is its level, not a label
                classCount = nil
            }
            sampleShape = [inChannels] + config.sampleShape.dropFirst()
            let outChannels = config.outputChannels
            guard outChannels == inChannels || outChannels == 2 * inChannels else {
                throw DiffusionError("\(path): out_channels \(outChannels) must equal in_channels \(inChannels), or be twice it for a model that predicts its variance")
            }
            predictsVariance = outChannels == 2 * inChannels
            if let autoencoder {
                guard autoencoder.latentChannels == inChannels else {
                    throw DiffusionError("\(path): the U-Net takes \(inChannels) channels and the autoencoder makes \(autoencoder.latentChannels)")
                }
                latent = LatentSpace(factor: autoencoder.downsamplingFactor,
                                     scalingFactor: pipeline?.decodesScaledLatents == false ? 1 : autoencoder.scalingFactor,
                                     imageChannels: autoencoder.outChannels,
                                     encoderChannels: autoencoder.kind == .gaussian && superResolution == nil ? autoencoder.inChannels : nil)
                sizeMultiple! *= autoencoder.downsamplingFactor
            }
            if let contextDim = config.contextDim {
                guard let encoder = components.directory(.textEncoder, in: path),
                      let tokenizer = components.directory(.tokenizer, in: path)
                else { throw DiffusionError("\(path): a text-conditioned U-Net needs text_encoder and tokenizer components") }
                let textConfig = try WeightFiles.config(encoder, CLIPTextConfig.init)
                guard textConfig.hiddenSize == contextDim else {
                    throw DiffusionError("\(path): the U-Net reads text states of \(contextDim) and the text encoder makes \(textConfig.hiddenSize)")
                }
                text = TextConditioning(maxLength: try CLIPTokenizer(directory: tokenizer).maxLength, contextDim: contextDim)
            }
        }
        var nullClass: Int?
        if let classCount {
            nullClass = (index["null_class"] as? NSNumber)?.intValue ?? classCount - 1
            guard (0..<classCount).contains(nullClass!) else {
                throw DiffusionError("\(path)/model_index.json: null_class \(nullClass!) outside 0..<\(classCount)")
            }
        }
        return ModelDescription(
            sampleShape: sampleShape, classCount: classCount, nullClass: nullClass,
            hasClassifier: components.pipeline == "GaussianMixture" || FileManager.default.fileExists(atPath: classifierConfigPath),
            predictsVariance: predictsVariance,
            sampleRange: Self.pipelines[components.pipeline]?.sampleRange ?? -1...1,
            recommendedGuidanceScale: (index["recommended_guidance_scale"] as? NSNumber)?.doubleValue,
            schedulerConfigData: FileManager.default.contents(atPath: schedulerConfigPath),
            schedulerConfigSource: schedulerConfigPath, latent: latent, text: text, sizeMultiple: sizeMultiple,
            superResolution: superResolution, notes: components.notes)
    }

    /// A super-resolution pipeline's conditioning: model_index.json's `upsample`
    /// (pixel space; default bicubic), `noise_level` (default 0) and
    /// `max_noise_level`, and the schedule its augmentation noises with (the
    /// `low_res_scheduler`'s, else the model's own).
    private func describeSuperResolution(_ style: SuperResolutionStyle, index: [String: Any], components: Components,
                                         config: any DenoiserConfig, imageChannels: Int) throws -> SuperResolution
    {
        let source = "\(path)/model_index.json"
        var upsample: Resampling?
        if style.resizes {
            let name = index["upsample"] as? String ?? Resampling.bicubic.rawValue
            guard let mode = Resampling(rawValue: name) else {
                throw DiffusionError("\(source): upsample \"\(name)\" is not one of \(Resampling.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            upsample = mode
        }
        var augmentation: SuperResolution.Augmentation?
        if style.augments {
            let level = index["noise_level"] as? NSNumber ?? 0
            let maximum = (index["max_noise_level"] as? NSNumber)?.intValue
            let schedulerPath = components.directory(.augmentationScheduler, in: path).map { "\($0)/scheduler_config.json" }
                ?? schedulerConfigPath
            augmentation = SuperResolution.Augmentation(
                defaultLevel: level.intValue, maxLevel: maximum, levelIsClassInput: config.classInput != nil,
                schedulerConfigData: FileManager.default.contents(atPath: schedulerPath), schedulerConfigSource: schedulerPath)
        } else if config.classInput != nil {
            throw DiffusionError("\(path): a \(components.pipeline) U-Net takes no class input")
        }
        return SuperResolution(imageChannels: imageChannels, upsample: upsample, scalesImage: style.scalesImage,
                               augmentation: augmentation)
    }

    private var classifierConfigPath: String { "\(path)/classifier/config.json" }

    private func loadMixture() throws -> GaussianMixture {
        guard let data = FileManager.default.contents(atPath: "\(path)/gmm.json") else {
            throw DiffusionError("\(path)/gmm.json: cannot read")
        }
        return try GaussianMixture(json: data, source: "\(path)/gmm.json")
    }

    /// Everything a render needs from the directory: what `describe` says, the
    /// denoiser (a U-Net, or the exact Gaussian mixture when model_index.json
    /// names `GaussianMixture`) and the noisy classifier when `classifier/` exists.
    public func load() throws -> LoadedModel {
        // model_index.json is read and checked once, for the description and the loading.
        let index = try modelIndex()
        let components = try checkedPipeline(index)
        let description = try describe(index: index, components: components)
        var parts = LoadedModel.Parts()
        if components.pipeline == "GaussianMixture" {
            let mixture = try loadMixture()
            parts.denoiser = mixture
            parts.classifier = mixture
        } else {
            let directory = components.directory(.denoiser, in: path) ?? path
            let weights = try WeightFiles.open(directory, "diffusion_pytorch_model")
            parts.denoiser = try denoiserConfig(components).makeModel(weights: weights)
            parts.parameterBytes += weights.float32Bytes
        }
        if let directory = components.directory(.autoencoder, in: path) {
            let weights = try WeightFiles.open(directory, "diffusion_pytorch_model")
            parts.autoencoder = try Autoencoder(config: try WeightFiles.config(directory, AutoencoderConfig.init), weights: weights)
            parts.parameterBytes += weights.float32Bytes
        }
        if let directory = components.directory(.textEncoder, in: path) {
            let weights = try WeightFiles.open(directory, "model")
            parts.textEncoder = TextEncoder(
                tokenizer: try CLIPTokenizer(directory: components.directory(.tokenizer, in: path)!),
                model: try CLIPTextModel(config: try WeightFiles.config(directory, CLIPTextConfig.init), weights: weights))
            parts.parameterBytes += weights.float32Bytes
        }
        if let data = FileManager.default.contents(atPath: classifierConfigPath) {
            parts.classifier = try TimeConditionedClassifier(
                config: data, weights: try SafeTensorsFile(path: "\(path)/classifier/model.safetensors"),
                source: classifierConfigPath)
        }
        return try LoadedModel(directory: self, description: description, parts: parts, contentHash: try contentHash())
    }

    /// FNV-1a (64-bit) over every regular file of the directory, in path order,
    /// names included: it changes whenever any weight or config changes.
    public func contentHash() throws -> String {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        func mix(_ bytes: UnsafeRawBufferPointer) {
            for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        }
        let fm = FileManager.default
        let files = (fm.enumerator(atPath: path)?.compactMap { $0 as? String } ?? []).sorted()
        for file in files {
            var isDirectory: ObjCBool = false
            guard fm.fileExists(atPath: "\(path)/\(file)", isDirectory: &isDirectory), !isDirectory.boolValue,
                  !file.hasPrefix("."), !file.contains("/.")
            else { continue }
            Array(file.utf8).withUnsafeBytes(mix)
            guard let handle = FileHandle(forReadingAtPath: "\(path)/\(file)") else {
                throw DiffusionError("\(path)/\(file): cannot read")
            }
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { chunk.withUnsafeBytes(mix) }
            try handle.close()
        }
        return "fnv1a64:" + String(hash, radix: 16)
    }
}

/// What a model is, without its weights: what planning a render checks a job against.
public struct ModelDescription: Sendable {
    /// One sample's shape `[channels, height, width]` at the model's own size
    /// (for a latent model, the latents').
    public let sampleShape: [Int]
    /// Class labels it takes, the null label included; nil when unconditional.
    public let classCount: Int?
    /// The label of the unconditional prediction, for class-conditional models.
    public let nullClass: Int?
    public let hasClassifier: Bool
    /// Whether the model returns its variance too: out_channels = 2 × in_channels
    /// (Improved DDPM's learned variance), the variance after the output.
    public let predictsVariance: Bool
    /// The pixel values of its images: −1...1, or 0...1 for score models' pipelines.
    public let sampleRange: ClosedRange<Float>
    public let recommendedGuidanceScale: Double?
    /// scheduler_config.json as stored (nil when the directory has none), and where it is.
    public let schedulerConfigData: Data?
    public let schedulerConfigSource: String
    /// The autoencoder a latent model's samples are decoded by (nil: samples are images).
    public let latent: LatentSpace?
    /// The prompts a text-conditioned model reads (nil: it takes none).
    public let text: TextConditioning?
    /// Image sides must be multiples of this many pixels (the U-Net's downsampling
    /// times the autoencoder's); nil: the model renders its own size only.
    public let sizeMultiple: Int?
    /// A super-resolution model's conditioning image (nil: it takes none).
    public let superResolution: SuperResolution?
    /// What loading it leaves out (a safety checker), for the log.
    public let notes: [String]

    public init(sampleShape: [Int], classCount: Int?, nullClass: Int?, hasClassifier: Bool, predictsVariance: Bool = false,
                sampleRange: ClosedRange<Float> = -1...1, recommendedGuidanceScale: Double?, schedulerConfigData: Data?,
                schedulerConfigSource: String, latent: LatentSpace? = nil, text: TextConditioning? = nil,
                sizeMultiple: Int? = nil, superResolution: SuperResolution? = nil, notes: [String] = [])
    {
        self.superResolution = superResolution
        self.sampleShape = sampleShape
        self.predictsVariance = predictsVariance
        self.sampleRange = sampleRange
        self.classCount = classCount
        self.nullClass = nullClass
        self.hasClassifier = hasClassifier
        self.recommendedGuidanceScale = recommendedGuidanceScale
        self.schedulerConfigData = schedulerConfigData
        self.schedulerConfigSource = schedulerConfigSource
        self.latent = latent
        self.text = text
        self.sizeMultiple = sizeMultiple
        self.notes = notes
    }

    /// The image size the model renders by default, `[height, width]` in pixels.
    public var defaultImageSize: [Int] { sampleShape.dropFirst().map { $0 * (latent?.factor ?? 1) } }

    /// The channels of its images (the decoder's, for a latent model).
    public var imageChannels: Int { latent?.imageChannels ?? sampleShape[0] }
}

/// A latent model's autoencoder, as planning sees it.
public struct LatentSpace: Sendable, Equatable {
    /// Pixels per latent along each side.
    public let factor: Int
    /// Latents are the encoder's output times this; the decoder reads latents / it.
    public let scalingFactor: Float
    public let imageChannels: Int
    /// The channels its encoder reads, when image-to-image may start from an
    /// image (an AutoencoderKL's: LDMPipeline's VQModel has no such pipeline).
    public let encoderChannels: Int?

    public init(factor: Int, scalingFactor: Float, imageChannels: Int, encoderChannels: Int? = nil) {
        (self.factor, self.scalingFactor, self.imageChannels) = (factor, scalingFactor, imageChannels)
        self.encoderChannels = encoderChannels
    }
}

/// A super-resolution model's low-resolution input, as planning sees it: an
/// image in −1...1 concatenated after the sample's channels.
public struct SuperResolution: Sendable, Equatable {
    public let imageChannels: Int
    /// Pixel space: the image is resized to the sample's size with this. nil: a
    /// latent model, whose latents are the image's size.
    public let upsample: Resampling?
    /// Whether the sampler's input scale applies to the image as to the sample
    /// (LDMSuperResolutionPipeline's `scale_model_input` of the concatenation).
    public let scalesImage: Bool
    /// Noise augmentation of the image (nil: it is read as it is).
    public let augmentation: Augmentation?

    public struct Augmentation: Sendable, Equatable {
        /// model_index.json's `noise_level`, and the largest a job may ask (`max_noise_level`).
        public let defaultLevel: Int
        public let maxLevel: Int?
        /// Whether the U-Net reads the level as its class input.
        public let levelIsClassInput: Bool
        /// The scheduler config whose training ᾱ the image is noised with.
        public let schedulerConfigData: Data?
        public let schedulerConfigSource: String
    }
}

/// A text-conditioned model's prompt input, as planning sees it.
public struct TextConditioning: Sendable, Equatable {
    /// Token ids per prompt (the tokenizer's model_max_length).
    public let maxLength: Int
    /// The width of the text states the U-Net reads.
    public let contextDim: Int

    public init(maxLength: Int, contextDim: Int) { (self.maxLength, self.contextDim) = (maxLength, contextDim) }
}

/// A tokenizer and the text model reading its ids.
public struct TextEncoder: Sendable {
    public let tokenizer: CLIPTokenizer
    public let model: CLIPTextModel

    public init(tokenizer: CLIPTokenizer, model: CLIPTextModel) { (self.tokenizer, self.model) = (tokenizer, model) }

    /// The text states of `prompts`, channel-major `[n, hidden, tokens, 1]`.
    public func encode(_ prompts: [String], on runtime: KernelRuntime) throws -> Tensor {
        try model.encode(prompts.map(tokenizer.encode), on: runtime)
    }
}

/// A model directory, loaded for rendering.
public struct LoadedModel: Sendable {
    /// Where it came from (nil for a model built in memory, as benchmarks do).
    public let directory: ModelDirectory?
    public let description: ModelDescription
    public let denoiser: any DenoisingModel
    public let classifier: (any NoisyClassifier)?
    public let autoencoder: Autoencoder?
    public let textEncoder: TextEncoder?
    /// The float32 bytes of every component's weights, as held in memory.
    public let parameterBytes: Int
    public let contentHash: String

    /// The components a directory loads into.
    public struct Parts {
        public var denoiser: (any DenoisingModel)?
        public var classifier: (any NoisyClassifier)?
        public var autoencoder: Autoencoder?
        public var textEncoder: TextEncoder?
        public var parameterBytes = 0

        public init(denoiser: (any DenoisingModel)? = nil, autoencoder: Autoencoder? = nil, textEncoder: TextEncoder? = nil,
                    parameterBytes: Int = 0) {
            self.denoiser = denoiser
            self.autoencoder = autoencoder
            self.textEncoder = textEncoder
            self.parameterBytes = parameterBytes
        }
    }

    public init(directory: ModelDirectory?, description: ModelDescription, parts: Parts, contentHash: String) throws {
        guard let denoiser = parts.denoiser else { throw DiffusionError("a model without a denoiser") }
        let inputChannels = description.sampleShape[0] + (description.superResolution?.imageChannels ?? 0)
        precondition(Array(description.sampleShape.dropFirst()) == Array(denoiser.sampleShape.dropFirst())
                     && inputChannels == denoiser.sampleShape[0]
                     && (description.superResolution != nil || description.classCount == denoiser.classCount),
                     "a model description that does not describe its denoiser")
        precondition((description.latent != nil) == (parts.autoencoder != nil) && (description.text != nil) == (parts.textEncoder != nil),
                     "a model description that does not describe its components")
        self.directory = directory
        self.description = description
        self.denoiser = denoiser
        self.classifier = parts.classifier
        self.autoencoder = parts.autoencoder
        self.textEncoder = parts.textEncoder
        self.parameterBytes = parts.parameterBytes
        self.contentHash = contentHash
    }

    public init(directory: ModelDirectory?, description: ModelDescription, denoiser: any DenoisingModel,
                classifier: (any NoisyClassifier)?, contentHash: String)
    {
        var parts = Parts(denoiser: denoiser)
        parts.classifier = classifier
        try! self.init(directory: directory, description: description, parts: parts, contentHash: contentHash)
    }
}
