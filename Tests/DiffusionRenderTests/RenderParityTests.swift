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

/// A U-Net render's images do not depend on the thread count, nor on the other
/// images of the job (the guidance's two passes share one batch).
@Suite struct RenderDeterminismTests {
    func render(_ json: String, threads: Int) throws -> Tensor {
        let job = try Job(json: Data(json.utf8), source: "job")
        let model = try TestSupport.models.load(job.model, relativeTo: nil)
        let render = try Render(job: job, model: model, registry: TestSupport.registry,
                                runtime: KernelRuntime(threadCount: threads), limits: RenderLimits(), initNoise: nil)
        return try render.run()
    }

    @Test func imagesAreTheSameAloneAndOnAnyThreadCount() throws {
        let job = #"{"model": "unet-tiny", "sampler": "ddpm", "steps": 8, "count": 3, "seed": 9, "class": [1, 2, 3], "guidance": {"kind": "cfg", "scale": 2.5}}"#
        let one = try render(job, threads: 1)
        let two = try render(job, threads: 2)
        #expect(one.isBitIdentical(to: two))
        let alone = try render(
            #"{"model": "unet-tiny", "sampler": "ddpm", "steps": 8, "count": 1, "seed": [\#(Job.imageSeed(9, 2))], "class": 3, "guidance": {"kind": "cfg", "scale": 2.5}}"#,
            threads: 2)
        #expect(alone.isBitIdentical(to: two.slice(2..<3)))
    }
}
