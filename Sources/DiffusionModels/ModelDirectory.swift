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
            throw ModelError("\(path): no such model directory")
        }
        if fm.fileExists(atPath: "\(path)/model_index.json")
            && (fm.fileExists(atPath: "\(path)/unet/config.json") || fm.fileExists(atPath: "\(path)/gmm.json"))
        {
            layout = .pipeline
        } else if fm.fileExists(atPath: "\(path)/config.json") {
            layout = .flat
        } else {
            throw ModelError("\(path): not a model directory (no model_index.json with unet/ or gmm.json, nor config.json)")
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
            throw ModelError("\(unetConfigPath): cannot read")
        }
        return try UNet2DConfig(json: data, source: unetConfigPath)
    }

    public func loadUNet() throws -> UNet2DModel {
        let config = try loadUNetConfig()
        do {
            return try UNet2DModel(config: config, weights: try SafeTensorsFile(path: unetWeightsPath))
        } catch let error as TensorFileError {
            throw ModelError(error.description)
        }
    }

    /// model_index.json as a dictionary (empty for the flat layout).
    public func modelIndex() throws -> [String: Any] {
        guard layout == .pipeline else { return [:] }
        guard let data = FileManager.default.contents(atPath: "\(path)/model_index.json"),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { throw ModelError("\(path)/model_index.json: not a JSON object") }
        return object
    }

    /// Everything a render needs from the directory: the denoiser (a U-Net, or
    /// the exact Gaussian mixture when model_index.json names `GaussianMixture`),
    /// the noisy classifier when `classifier/` exists, and the settings around them.
    public func load() throws -> LoadedModel {
        let index = try modelIndex()
        let denoiser: any DenoisingModel
        var classifier: (any NoisyClassifier)?
        if index["_class_name"] as? String == "GaussianMixture" {
            guard let data = FileManager.default.contents(atPath: "\(path)/gmm.json") else {
                throw ModelError("\(path)/gmm.json: cannot read")
            }
            let mixture = try GaussianMixture(json: data, source: "\(path)/gmm.json")
            denoiser = mixture
            classifier = mixture
        } else {
            denoiser = try loadUNet()
        }
        let classifierConfig = "\(path)/classifier/config.json"
        if let data = FileManager.default.contents(atPath: classifierConfig) {
            do {
                classifier = try TimeConditionedClassifier(
                    config: data, weights: try SafeTensorsFile(path: "\(path)/classifier/model.safetensors"),
                    source: classifierConfig)
            } catch let error as TensorFileError {
                throw ModelError(error.description)
            }
        }
        var nullClass: Int?
        if let classes = denoiser.classCount {
            let named = (index["null_class"] as? NSNumber)?.intValue
            nullClass = named ?? classes - 1
            guard (0..<classes).contains(nullClass!) else {
                throw ModelError("\(path)/model_index.json: null_class \(nullClass!) outside 0..<\(classes)")
            }
        }
        return LoadedModel(
            directory: self, denoiser: denoiser, classifier: classifier, nullClass: nullClass,
            recommendedGuidanceScale: (index["recommended_guidance_scale"] as? NSNumber)?.doubleValue,
            schedulerConfigData: FileManager.default.contents(atPath: schedulerConfigPath),
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
                throw ModelError("\(path)/\(file): cannot read")
            }
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { chunk.withUnsafeBytes(mix) }
            try handle.close()
        }
        return "fnv1a64:" + String(hash, radix: 16)
    }
}

/// A model directory, loaded for rendering.
public struct LoadedModel: Sendable {
    /// Where it came from (nil for a model built in memory, as benchmarks do).
    public let directory: ModelDirectory?
    public let denoiser: any DenoisingModel
    public let classifier: (any NoisyClassifier)?
    /// The label of the unconditional prediction, for class-conditional models.
    public let nullClass: Int?
    public let recommendedGuidanceScale: Double?
    /// scheduler_config.json as stored (nil when the directory has none).
    public let schedulerConfigData: Data?
    public let contentHash: String

    public init(directory: ModelDirectory?, denoiser: any DenoisingModel, classifier: (any NoisyClassifier)?,
                nullClass: Int?, recommendedGuidanceScale: Double?, schedulerConfigData: Data?, contentHash: String)
    {
        self.directory = directory
        self.denoiser = denoiser
        self.classifier = classifier
        self.nullClass = nullClass
        self.recommendedGuidanceScale = recommendedGuidanceScale
        self.schedulerConfigData = schedulerConfigData
        self.contentHash = contentHash
    }
}
