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
    public var unetWeightsPath: String { "\(unetDirectory)/diffusion_pytorch_model.safetensors" }
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
        return try UNet2DModel(config: config, weights: try SafeTensorsFile(path: unetWeightsPath))
    }

    /// model_index.json as a dictionary (empty for the flat layout).
    public func modelIndex() throws -> [String: Any] {
        guard layout == .pipeline else { return [:] }
        guard let data = FileManager.default.contents(atPath: "\(path)/model_index.json"),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { throw DiffusionError("\(path)/model_index.json: not a JSON object") }
        return object
    }

    /// One pipeline class as this host renders it: the components it reads
    /// and the classes each may be (empty: any, the scheduler's class picks a
    /// sampler instead), and the range of its samples' pixel values.
    struct Pipeline {
        let components: [String: Set<String>]
        var sampleRange: ClosedRange<Float> = -1...1
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
    ]

    /// The pipeline class and its components, checked against `pipelines`
    /// (a flat directory is a U-Net and its scheduler, as DDPMPipeline).
    func checkedPipeline(_ index: [String: Any]) throws -> String {
        guard layout == .pipeline else { return "DDPMPipeline" }
        let source = "\(path)/model_index.json"
        guard let name = index["_class_name"] as? String else { throw DiffusionError("\(source): no \"_class_name\"") }
        guard let components = Self.pipelines[name]?.components else {
            throw DiffusionError("\(source): pipeline \(name) is not supported (supported: \(Self.pipelines.keys.sorted().joined(separator: ", ")))")
        }
        // Components are the entries ["library", "Class"]; [null, null] marks one left out.
        for (key, value) in index.sorted(by: { $0.key < $1.key }) where !key.hasPrefix("_") {
            guard let entry = value as? [Any], entry.count == 2 else { continue }
            if entry.allSatisfy({ $0 is NSNull }) { continue }
            let className = entry[1] as? String ?? "?"
            guard let allowed = components[key] else {
                throw DiffusionError("\(source): component \(key) (\(className)) is not supported in a \(name) (this host reads \(components.keys.sorted().joined(separator: " + ")))")
            }
            if !allowed.isEmpty && !allowed.contains(className) {
                throw DiffusionError("\(source): component \(key) is a \(className); a \(name) here needs \(allowed.sorted().joined(separator: " or "))")
            }
        }
        return name
    }

    /// What a render plan needs to know of the model, from its configs alone:
    /// cheap enough to check every job at admission, before any weight is read.
    public func describe() throws -> ModelDescription {
        let index = try modelIndex()
        return try describe(index: index, pipeline: try checkedPipeline(index))
    }

    private func describe(index: [String: Any], pipeline: String) throws -> ModelDescription {
        let sampleShape: [Int]
        let classCount: Int?
        var predictsVariance = false
        if pipeline == "GaussianMixture" {
            let mixture = try loadMixture()
            (sampleShape, classCount) = (mixture.sampleShape, mixture.classCount)
        } else {
            let config = try loadUNetConfig()
            (sampleShape, classCount) = (config.sampleShape, config.numClassEmbeds)
            guard config.outChannels == config.inChannels || config.outChannels == 2 * config.inChannels else {
                throw DiffusionError("\(path): out_channels \(config.outChannels) must equal in_channels \(config.inChannels), or be twice it for a model that predicts its variance")
            }
            predictsVariance = config.outChannels == 2 * config.inChannels
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
            hasClassifier: pipeline == "GaussianMixture" || FileManager.default.fileExists(atPath: classifierConfigPath),
            predictsVariance: predictsVariance,
            sampleRange: Self.pipelines[pipeline]?.sampleRange ?? -1...1,
            recommendedGuidanceScale: (index["recommended_guidance_scale"] as? NSNumber)?.doubleValue,
            schedulerConfigData: FileManager.default.contents(atPath: schedulerConfigPath),
            schedulerConfigSource: schedulerConfigPath)
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
        let pipeline = try checkedPipeline(index)
        let description = try describe(index: index, pipeline: pipeline)
        let denoiser: any DenoisingModel
        var classifier: (any NoisyClassifier)?
        if pipeline == "GaussianMixture" {
            let mixture = try loadMixture()
            denoiser = mixture
            classifier = mixture
        } else {
            denoiser = try loadUNet()
        }
        if let data = FileManager.default.contents(atPath: classifierConfigPath) {
            classifier = try TimeConditionedClassifier(
                config: data, weights: try SafeTensorsFile(path: "\(path)/classifier/model.safetensors"),
                source: classifierConfigPath)
        }
        return LoadedModel(directory: self, description: description, denoiser: denoiser, classifier: classifier,
                           contentHash: try contentHash())
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
    /// One image's shape `[channels, height, width]`.
    public let sampleShape: [Int]
    /// Class labels it takes, the null label included; nil when unconditional.
    public let classCount: Int?
    /// The label of the unconditional prediction, for class-conditional models.
    public let nullClass: Int?
    public let hasClassifier: Bool
    /// Whether the model returns its variance too: out_channels = 2 × in_channels
    /// (Improved DDPM's learned variance), the variance after the output.
    public let predictsVariance: Bool
    /// The pixel values of its samples: −1...1, or 0...1 for score models' pipelines.
    public let sampleRange: ClosedRange<Float>
    public let recommendedGuidanceScale: Double?
    /// scheduler_config.json as stored (nil when the directory has none), and where it is.
    public let schedulerConfigData: Data?
    public let schedulerConfigSource: String

    public init(sampleShape: [Int], classCount: Int?, nullClass: Int?, hasClassifier: Bool, predictsVariance: Bool = false,
                sampleRange: ClosedRange<Float> = -1...1, recommendedGuidanceScale: Double?, schedulerConfigData: Data?,
                schedulerConfigSource: String)
    {
        self.sampleShape = sampleShape
        self.predictsVariance = predictsVariance
        self.sampleRange = sampleRange
        self.classCount = classCount
        self.nullClass = nullClass
        self.hasClassifier = hasClassifier
        self.recommendedGuidanceScale = recommendedGuidanceScale
        self.schedulerConfigData = schedulerConfigData
        self.schedulerConfigSource = schedulerConfigSource
    }
}

/// A model directory, loaded for rendering.
public struct LoadedModel: Sendable {
    /// Where it came from (nil for a model built in memory, as benchmarks do).
    public let directory: ModelDirectory?
    public let description: ModelDescription
    public let denoiser: any DenoisingModel
    public let classifier: (any NoisyClassifier)?
    public let contentHash: String

    public init(directory: ModelDirectory?, description: ModelDescription, denoiser: any DenoisingModel,
                classifier: (any NoisyClassifier)?, contentHash: String)
    {
        precondition(description.sampleShape == denoiser.sampleShape && description.classCount == denoiser.classCount,
                     "a model description that does not describe its denoiser")
        self.directory = directory
        self.description = description
        self.denoiser = denoiser
        self.classifier = classifier
        self.contentHash = contentHash
    }
}
