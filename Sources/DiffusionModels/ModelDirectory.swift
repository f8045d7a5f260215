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
        if fm.fileExists(atPath: "\(path)/model_index.json") && fm.fileExists(atPath: "\(path)/unet/config.json") {
            layout = .pipeline
        } else if fm.fileExists(atPath: "\(path)/config.json") {
            layout = .flat
        } else {
            throw ModelError("\(path): not a diffusers model directory (no model_index.json with unet/, nor config.json)")
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

    /// The scheduler's config.json as a dictionary, or nil when the directory has none.
    public func schedulerConfig() throws -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: schedulerConfigPath) else { return nil }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ModelError("\(schedulerConfigPath): not a JSON object")
        }
        return object
    }
}
