import DiffusionKernels
import Foundation

/// Where a component's weights are, as diffusers and transformers save them.
enum WeightFiles {
    /// `directory/NAME.safetensors`, else the fp16 variant `NAME.fp16.safetensors`
    /// (published directories often carry only that one). A pickle (`.bin`,
    /// `.ckpt`, `.pt`) is refused: loading one runs code from the file.
    static func locate(_ directory: String, _ name: String) throws -> String {
        let fm = FileManager.default
        for candidate in ["\(name).safetensors", "\(name).fp16.safetensors"] where fm.fileExists(atPath: "\(directory)/\(candidate)") {
            return "\(directory)/\(candidate)"
        }
        let files = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
        if let pickle = files.sorted().first(where: { file in [".bin", ".ckpt", ".pt", ".pth"].contains { file.hasSuffix($0) } }) {
            throw DiffusionError("\(directory)/\(pickle): pickled weights are not loaded (they can run code); convert them to \(name).safetensors (e.g. diffusers' save_pretrained(..., safe_serialization=True))")
        }
        throw DiffusionError("\(directory): no \(name).safetensors (nor its fp16 variant)")
    }

    static func open(_ directory: String, _ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: try locate(directory, name))
    }

    /// `directory/config.json` parsed by `parse(data, source)`.
    static func config<Config>(_ directory: String, _ parse: (Data, String) throws -> Config) throws -> Config {
        let source = "\(directory)/config.json"
        return try parse(try json(source), source)
    }

    static func json(_ path: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path) else { throw DiffusionError("\(path): cannot read") }
        return data
    }
}

extension CLIPTextModel {
    /// A `text_encoder/` directory: config.json and model.safetensors.
    public convenience init(directory: String) throws {
        try self.init(config: try WeightFiles.config(directory, CLIPTextConfig.init), weights: try WeightFiles.open(directory, "model"))
    }
}

extension Autoencoder {
    /// An `AutoencoderKL` or `VQModel` directory: config.json and diffusion_pytorch_model.safetensors.
    public convenience init(directory: String) throws {
        try self.init(config: try WeightFiles.config(directory, AutoencoderConfig.init),
                      weights: try WeightFiles.open(directory, "diffusion_pytorch_model"))
    }
}

extension UNet2DConditionModel {
    /// A `unet/` directory: config.json and diffusion_pytorch_model.safetensors (or its fp16 variant).
    public convenience init(directory: String) throws {
        try self.init(config: try WeightFiles.config(directory, UNet2DConditionConfig.init),
                      weights: try WeightFiles.open(directory, "diffusion_pytorch_model"))
    }
}

extension SafeTensorsFile {
    /// The bytes its tensors take as float32, as the models hold them.
    var float32Bytes: Int { entries.values.reduce(0) { $0 + 4 * $1.shape.reduce(1, *) } }
}
