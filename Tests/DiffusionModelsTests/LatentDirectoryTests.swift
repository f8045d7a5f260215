import DiffusionKernels
import DiffusionModels
import Foundation
import Testing

/// What a StableDiffusionPipeline directory may hold beyond the components
/// rendered: a safety checker is skipped with a note, pickled weights are refused.
@Suite struct LatentDirectoryTests {
    func copy() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sd1-\(UUID().uuidString)").path
        try FileManager.default.copyItem(atPath: "\(LatentFixtures.root)/sd1-tiny", toPath: path)
        return path
    }

    @Test func aSafetyCheckerIsSkippedWithANote() throws {
        let path = try copy()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let indexPath = "\(path)/model_index.json"
        var index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: indexPath))) as! [String: Any]
        index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        try JSONSerialization.data(withJSONObject: index).write(to: URL(fileURLWithPath: indexPath))
        let notes = try ModelDirectory(path: path).describe().notes
        #expect(notes == ["\(path): feature_extractor (CLIPImageProcessor) is not run by this host; images are not filtered",
                          "\(path): safety_checker (StableDiffusionSafetyChecker) is not run by this host; images are not filtered"])
    }

    @Test func pickledWeightsAreRefused() throws {
        let path = try copy()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try FileManager.default.moveItem(atPath: "\(path)/unet/diffusion_pytorch_model.safetensors",
                                         toPath: "\(path)/unet/diffusion_pytorch_model.bin")
        _ = try ModelDirectory(path: path).describe()  // configs alone still describe it
        #expect(throws: DiffusionError("\(path)/unet/diffusion_pytorch_model.bin: pickled weights are not loaded (they can run code); convert them to diffusion_pytorch_model.safetensors (e.g. diffusers' save_pretrained(..., safe_serialization=True))")) {
            try ModelDirectory(path: path).load()
        }
    }
}
