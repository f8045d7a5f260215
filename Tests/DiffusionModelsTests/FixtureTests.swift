import DiffusionKernels
import DiffusionModels
import Foundation
import Testing

/// The U-Net against outputs diffusers computed in float64 (tools/reference/make_fixtures.py).
@Suite struct FixtureTests {
    struct Case: Decodable {
        let timesteps: [Float]
        let class_labels: [Int]?
        let diffusers_f32_max_abs_deviation: Double
        let tolerance: Double
    }

    static let fixtures = Bundle.module.resourceURL!.appendingPathComponent("Fixtures").path
    static let names = ((try? FileManager.default.contentsOfDirectory(atPath: fixtures)) ?? []).sorted()

    @Test func fixturesArePresent() {
        #expect(Self.names.count == 7, "fixtures in \(Self.fixtures): \(Self.names)")
    }

    @Test(arguments: names)
    func matchesDiffusers(_ name: String) throws {
        let path = "\(Self.fixtures)/\(name)"
        let info = try JSONDecoder().decode(Case.self, from: Data(contentsOf: URL(fileURLWithPath: "\(path)/case.json")))
        let directory = try ModelDirectory(path: path)
        #expect(directory.layout == (name.hasPrefix("pipeline") ? .pipeline : .flat))
        let scheduler = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory.schedulerConfigPath)))
        #expect((scheduler as? [String: Any])?["_class_name"] as? String == "DDPMScheduler")
        let model = try directory.loadUNet()
        let input = try NPYFile.read(path: "\(path)/input.npy")
        let expected = try NPYFile.read(path: "\(path)/expected.npy")
        let output = try model.forward(input, timesteps: info.timesteps, classLabels: info.class_labels,
                                       on: KernelRuntime(threadCount: 2))
        let error = Double(output.maxAbsDifference(expected))
        print("fixture \(name): max |ours - diffusers float64| = \(error), tolerance \(info.tolerance) "
              + "(diffusers float32 deviation \(info.diffusers_f32_max_abs_deviation))")
        #expect(error <= info.tolerance)
    }
}
