import DiffusionKernels
import DiffusionRender
import Foundation
import Testing

/// Schedules and samplers against diffusers (tools/reference/make_sampler_fixtures.py).
@Suite struct SamplerParityTests {
    nonisolated(unsafe) static let fixture: [String: Any] = {
        let data = FileManager.default.contents(atPath: "\(TestSupport.fixtures)/samplers.json")!
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()

    static var schedules: [String: [String: Any]] { fixture["schedules"] as! [String: [String: Any]] }
    static var cases: [[String: Any]] { fixture["cases"] as! [[String: Any]] }

    func levels(_ config: [String: Any]) throws -> NoiseLevels {
        try NoiseLevels(options: ComponentOptions(modelConfig: config, overrides: [:]), registry: TestSupport.registry)
    }

    @Test(arguments: ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
    func schedulesMatchDiffusers(_ name: String) throws {
        let expected = Self.schedules[name]!
        var config = expected["options"] as! [String: Any]
        config["beta_schedule"] = name
        let levels = try levels(config)
        let betas = (expected["betas"] as! [NSNumber]).map(\.doubleValue)
        let products = (expected["alphas_cumprod"] as! [NSNumber]).map(\.doubleValue)
        #expect(levels.trainSteps == 1000)
        // diffusers keeps both in float32; these are double.
        #expect(zip(levels.betas, betas).allSatisfy { abs($0 - $1) <= 2e-7 * max($1, 1e-3) + 1e-9 })
        #expect(zip(levels.alphasCumprod, products).map { abs($0 - $1) }.max()! < 2e-6)
    }

    @Test func trainedBetasBypassTheSchedule() throws {
        let levels = try levels(["trained_betas": [0.1, 0.2, 0.5], "beta_schedule": "no such schedule"])
        #expect(levels.betas == [0.1, 0.2, 0.5])
        #expect(abs(levels.alphasCumprod[2] - 0.9 * 0.8 * 0.5) < 1e-15)
        #expect(throws: DiffusionError("beta_schedule \"cosine\" is not provided by any plugin (available: linear, scaled_linear, sigmoid, squaredcos_cap_v2)")) {
            try self.levels(["beta_schedule": "cosine"])
        }
    }

    @Test func timestepSpacingsMatchDiffusers() throws {
        let levels = try levels([:])
        for entry in Self.fixture["spacings"] as! [[String: Any]] {
            let options = entry["options"] as! [String: Any]
            for name in ["ddim", "ddpm"] {
                let sampler = try Sampler(name: name, registry: TestSupport.registry,
                                          options: ComponentOptions(modelConfig: options, overrides: [:]), levels: levels)
                let steps = entry["steps"] as! Int
                let expected = (entry["timesteps"] as! [NSNumber]).map(\.int32Value)
                if expected.contains(where: { $0 >= 1000 }) {
                    // diffusers picks timestep 1000 here and fails later, indexing past its schedule.
                    #expect(throws: DiffusionError("sampler \(name): timestep 1000 falls outside 0..<1000 (check steps_offset)")) {
                        try sampler.setTimesteps(steps)
                    }
                } else {
                    #expect(try sampler.setTimesteps(steps) == expected, "\(name) \(options) \(steps) steps")
                }
            }
        }
    }

    @Test(arguments: cases.indices)
    func trajectoriesMatchDiffusers(_ index: Int) throws {
        let c = Self.cases[index]
        let config = c["config"] as! [String: Any]
        let shape = c["shape"] as! [Int]
        let seeds = (c["seeds"] as! [NSNumber]).map(\.uint64Value)
        let options = ComponentOptions(modelConfig: config, overrides: c["options"] as! [String: Any])
        let sampler = try Sampler(name: c["sampler"] as! String, registry: TestSupport.registry, options: options,
                                  levels: try levels(config))
        #expect(options.unreadOverrides.isEmpty)
        #expect(try sampler.setTimesteps(c["steps"] as! Int) == (c["timesteps"] as! [NSNumber]).map(\.int32Value))
        func tensor(_ values: Any, _ shape: [Int]) -> Tensor { Tensor(shape: shape, scalars: (values as! [NSNumber]).map(\.floatValue)) }
        let outputShape = c["output_shape"] as! [Int]  // twice the channels for a learned variance
        let generators = seeds.map { ImageGenerator(seed: $0) }
        var x = tensor(c["sample"]!, shape)
        var worst: Float = 0
        for (step, (output, expected)) in zip(c["model_outputs"] as! [Any], c["trajectory"] as! [Any]).enumerated() {
            x = try sampler.step(step, modelOutput: tensor(output, outputShape), sample: x, generators: generators).previous
            worst = max(worst, x.maxAbsDifference(tensor(expected, shape)))
        }
        print("sampler case \(index) (\(c["sampler"]!), \(config)): max step error \(worst)")
        #expect(worst < 1e-4)
    }

    @Test func stateRoundTripsAndResumesTheSameSteps() throws {
        let config: [String: Any] = ["beta_schedule": "linear", "timestep_spacing": "trailing"]
        let levels = try levels(config)
        let sampler = try Sampler(name: "ddim", registry: TestSupport.registry,
                                  options: ComponentOptions(modelConfig: config, overrides: [:]), levels: levels)
        let chosen = try sampler.setTimesteps(20)
        let blob = sampler.saveState()
        let resumed = try Sampler(name: "ddim", registry: TestSupport.registry,
                                  options: ComponentOptions(modelConfig: config, overrides: [:]), levels: levels)
        try resumed.setTimesteps(20)  // as a resumed job's plan does, before the blob
        try resumed.restoreState(blob)
        let x = Tensor(shape: [1, 4], scalars: [0.5, -1, 2, 0]), e = Tensor(shape: [1, 4], scalars: [0.1, 0.2, -0.3, 1])
        let a = try sampler.step(7, modelOutput: e, sample: x, generators: [ImageGenerator(seed: 1)]).previous
        let b = try resumed.step(7, modelOutput: e, sample: x, generators: [ImageGenerator(seed: 1)]).previous
        #expect(a.isBitIdentical(to: b))
        #expect(chosen.count == 20)
        #expect(throws: DiffusionError("sampler ddim: sampler state version 9 is not known (1 is)")) {
            try resumed.restoreState([9, 0, 0, 0, 0, 0, 0, 0])
        }
    }

    @Test func badOptionsAreOneLineErrors() throws {
        let levels = try levels([:])
        func make(_ overrides: [String: Any], _ name: String = "ddim") throws {
            _ = try Sampler(name: name, registry: TestSupport.registry,
                            options: ComponentOptions(modelConfig: [:], overrides: overrides), levels: levels)
        }
        #expect(throws: DiffusionError("sampler ddim: prediction_type \"noise\" is not supported (one of: epsilon, sample, v_prediction)")) {
            try make(["prediction_type": "noise"])
        }
        #expect(throws: DiffusionError("sampler ddpm: variance_type \"fixed_small_log\" is not supported (one of: fixed_small, fixed_large, learned, learned_range)")) {
            try make(["variance_type": "fixed_small_log"], "ddpm")
        }
        #expect(throws: DiffusionError("sampler ddim: eta must be a number")) { try make(["eta": "lots"]) }
        #expect(throws: DiffusionError("sampler \"plms\" is not provided by any plugin (available: ddim, ddpm, dpmsolver++, euler, euler_ancestral, heun, langevin, lcm, lms, pndm, score_sde_ve, unipc)")) { try make([:], "plms") }
        let sampler = try Sampler(name: "ddpm", registry: TestSupport.registry,
                                  options: ComponentOptions(modelConfig: [:], overrides: [:]), levels: levels)
        #expect(throws: DiffusionError("sampler ddpm: steps must be between 1 and num_train_timesteps (1000), not 1001")) {
            try sampler.setTimesteps(1001)
        }
    }
}

/// The ABI 1.1 samplers against diffusers' pipeline loop: each evaluation's time
/// input and `scale_model_input`, `init_noise_sigma`, and the trajectory.
@Suite struct PipelineSamplerParityTests {
    static var cases: [[String: Any]] { SamplerParityTests.fixture["pipeline_cases"] as! [[String: Any]] }

    @Test(arguments: cases.indices)
    func trajectoriesMatchDiffusers(_ index: Int) throws {
        let c = Self.cases[index]
        let name = c["sampler"] as! String
        let config = c["config"] as! [String: Any]
        let shape = c["shape"] as! [Int]
        let options = ComponentOptions(modelConfig: config, overrides: c["options"] as! [String: Any])
        let levels = try NoiseLevels(options: options, registry: TestSupport.registry)
        let sampler = try Sampler(name: name, registry: TestSupport.registry, options: options, levels: levels)
        try sampler.setTimesteps(c["steps"] as! Int)
        #expect(options.unreadOverrides.isEmpty)
        let times = (c["times"] as! [NSNumber]).map(\.doubleValue)
        let scales = (c["input_scales"] as! [NSNumber]).map(\.doubleValue)
        try #require(sampler.evaluations.count == times.count, "\(name): \(sampler.evaluations.count) evaluations, diffusers \(times.count)")
        for (i, evaluation) in sampler.evaluations.enumerated() {
            // diffusers keeps times and σ in float32
            #expect(abs(evaluation.time - times[i]) <= 2e-4 * max(1, abs(times[i])), "\(name) evaluation \(i) time \(evaluation.time) vs \(times[i])")
            // diffusers' ᾱ is a float32 product of T factors, relatively off by up to T·2⁻²⁴, which
            // moves σ (and the scale, and every Karras σ through σ_max) by half that at most
            let tolerance = 1e-6 + Double(levels.trainSteps) * 0x1p-24 / 2
            #expect(abs(evaluation.inputScale - scales[i]) <= tolerance * scales[i], "\(name) evaluation \(i) scale")
        }
        let sigma = (c["init_noise_sigma"] as! NSNumber).doubleValue
        #expect(abs(sampler.initNoiseSigma - sigma) <= 1e-5 * sigma)

        func tensor(_ values: Any) -> Tensor { Tensor(shape: shape, scalars: (values as! [NSNumber]).map(\.floatValue)) }
        let generators = (c["seeds"] as! [NSNumber]).map { ImageGenerator(seed: $0.uint64Value) }
        var x = tensor(c["noise"]!).scaled(by: Float(sampler.initNoiseSigma))
        var worst: Float = 0
        for (i, (output, expected)) in zip(c["model_outputs"] as! [Any], c["trajectory"] as! [Any]).enumerated() {
            x = try sampler.step(i, modelOutput: tensor(output), sample: x, generators: generators).previous
            let reference = tensor(expected)
            let magnitude = max(1, (0..<reference.count).map { abs(reference.data[$0]) }.max()!)
            worst = max(worst, x.maxAbsDifference(reference) / magnitude)
        }
        print("pipeline sampler case \(index) (\(name), \(c["options"]!)): max relative step error \(worst)")
        #expect(worst < 1e-4, "\(name) case \(index)")
    }

    /// Resuming from the state saved after any evaluation (mid-step for Heun
    /// and PNDM's Runge–Kutta, with multistep histories) continues bit-identically.
    @Test(arguments: cases.indices)
    func stateSavedAfterAnyEvaluationResumesBitIdentically(_ index: Int) throws {
        let c = Self.cases[index]
        let name = c["sampler"] as! String
        let shape = c["shape"] as! [Int]
        func make() throws -> Sampler {
            let options = ComponentOptions(modelConfig: c["config"] as! [String: Any], overrides: c["options"] as! [String: Any])
            let sampler = try Sampler(name: name, registry: TestSupport.registry, options: options,
                                      levels: try NoiseLevels(options: options, registry: TestSupport.registry))
            try sampler.setTimesteps(c["steps"] as! Int)
            return sampler
        }
        func tensor(_ values: Any) -> Tensor { Tensor(shape: shape, scalars: (values as! [NSNumber]).map(\.floatValue)) }
        let outputs = (c["model_outputs"] as! [Any]).map(tensor)
        let seeds = (c["seeds"] as! [NSNumber]).map(\.uint64Value)
        let uninterrupted = try make()
        let generators = seeds.map { ImageGenerator(seed: $0) }
        var samples = [tensor(c["noise"]!)]
        var states: [(sampler: [UInt8], generators: [[UInt32]])] = []
        for (i, output) in outputs.enumerated() {
            states.append((uninterrupted.saveState(), generators.map(\.generator.state)))
            samples.append(try uninterrupted.step(i, modelOutput: output, sample: samples[i], generators: generators).previous)
        }
        for cut in 1..<outputs.count {
            let resumed = try make()
            try resumed.restoreState(states[cut].sampler)
            let restored = seeds.map { ImageGenerator(seed: $0) }
            for (generator, state) in zip(restored, states[cut].generators) { generator.generator = Philox(state: state)! }
            var x = samples[cut]
            for i in cut..<outputs.count { x = try resumed.step(i, modelOutput: outputs[i], sample: x, generators: restored).previous }
            #expect(x.isBitIdentical(to: samples.last!), "\(name) case \(index) resumed after evaluation \(cut)")
        }
        #expect(throws: DiffusionError.self) { try make().restoreState([9, 0, 0, 0]) }
    }
}
