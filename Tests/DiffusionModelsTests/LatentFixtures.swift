import DiffusionKernels
import DiffusionModels
import Foundation

/// Tests/LatentFixtures (tools/reference/make_latent_fixtures.py): small
/// StableDiffusionPipeline and LDMPipeline directories saved by diffusers, with
/// transformers' and diffusers' outputs per component and per render.
enum LatentFixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("LatentFixtures").path

    struct Case: Decodable {
        let diffusers_f32_max_abs_deviation: Double
        let tolerance: Double
        let prompts: [String]?
        let timesteps: [Float]?
    }

    static func cases(_ model: String) throws -> [String: Case] {
        struct File: Decodable { let cases: [String: Case] }
        return try JSONDecoder().decode(File.self, from: Data(contentsOf: URL(fileURLWithPath: "\(root)/\(model)/cases.json"))).cases
    }

    static func array(_ model: String, _ name: String) throws -> Tensor {
        try NPYFile.read(path: "\(root)/\(model)/\(name).npy")
    }

    /// Prints and returns max |ours − diffusers float64| for one case.
    static func error(_ model: String, _ name: String, _ output: Tensor) throws -> (Double, Case) {
        let info = try cases(model)[name]!
        let expected = try array(model, "\(name)-expected")
        let error = Double(output.maxAbsDifference(expected))
        print("\(model)/\(name): max |ours - diffusers float64| = \(error), tolerance \(info.tolerance) "
              + "(diffusers float32 deviation \(info.diffusers_f32_max_abs_deviation))")
        return (error, info)
    }
}
