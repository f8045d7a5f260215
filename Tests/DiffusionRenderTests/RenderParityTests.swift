import DiffusionKernels
import DiffusionRender
import Foundation
import Testing

/// Whole renders against diffusers' own loops (tools/reference/make_render_fixtures.py).
@Suite struct RenderParityTests {
    struct Case: Decodable {
        let job: String
        let expected: String
        let diffusers_f32_max_abs_deviation: Double
        let tolerance: Double
    }

    static let cases: [Case] = {
        let data = FileManager.default.contents(atPath: "\(TestSupport.fixtures)/render-cases.json")!
        struct File: Decodable { let cases: [Case] }
        return try! JSONDecoder().decode(File.self, from: data).cases
    }()

    @Test(arguments: cases.indices)
    func matchesDiffusers(_ index: Int) throws {
        let c = Self.cases[index]
        let output = try TestSupport.temporaryDirectory()
        var render = OneShotRender()
        render.pluginDirectories = [TestSupport.buildDirectory]
        render.modelDirectories = [TestSupport.fixtures]
        try render.run(jobPath: "\(TestSupport.fixtures)/\(c.job)", outputDirectory: output)
        let samples = try NPYFile.read(path: "\(output)/samples.npy")
        let expected = try NPYFile.read(path: "\(TestSupport.fixtures)/\(c.expected)")
        let error = Double(samples.maxAbsDifference(expected))
        print("render case \(c.job): max |ours - diffusers float64| = \(error), tolerance \(c.tolerance) "
              + "(diffusers float32 deviation \(c.diffusers_f32_max_abs_deviation))")
        #expect(error <= c.tolerance)
    }
}
