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

    static func json(_ path: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path) else { throw DiffusionError("\(path): cannot read") }
        return data
    }
}

extension CLIPTextModel {
    /// A `text_encoder/` directory: config.json and model.safetensors.
    public convenience init(directory: String) throws {
        let config = try CLIPTextConfig(json: try WeightFiles.json("\(directory)/config.json"), source: "\(directory)/config.json")
        try self.init(config: config, weights: try WeightFiles.open(directory, "model"))
    }
}
