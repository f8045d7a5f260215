import DiffusionKernels
@testable import DiffusionRender
import Foundation
import Testing

@Suite struct PluginRegistryTests {
    @Test func loadsThePackagesPlugins() {
        let registry = TestSupport.registry
        #expect(registry.problems.isEmpty, "\(registry.problems)")
        #expect(Set(registry.schedules.keys) == ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
        #expect(Set(registry.samplers.keys) == ["ddpm", "ddim", "euler", "euler_ancestral", "heun", "lms", "dpmsolver++",
                                                 "unipc", "pndm", "lcm", "score_sde_ve", "langevin"])
        #expect(registry.samplerClasses == [
            "DDPMScheduler": "ddpm", "DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler",
            "EulerAncestralDiscreteScheduler": "euler_ancestral", "HeunDiscreteScheduler": "heun",
            "LMSDiscreteScheduler": "lms", "DPMSolverMultistepScheduler": "dpmsolver++",
            "UniPCMultistepScheduler": "unipc", "PNDMScheduler": "pndm", "LCMScheduler": "lcm", "ScoreSdeVeScheduler": "score_sde_ve",
        ])
        #expect(registry.schedules["sigmoid"]?.file.hasSuffix("libdiffusion-plugin-sigmoid-schedule.so") == true)
        #expect(Set(registry.guidances.keys) == ["cfg", "classifier"])
        #expect(Set(registry.libraries.map(\.name)) == ["schedules", "sigmoid-schedule", "ddpm", "ddim", "guidance", "samplers", "score"])
    }

    /// Compiles a one-file C plugin whose descriptor has `abi` and the given body.
    func compile(_ name: String, in directory: String, abi: String = "DFN_ABI_VERSION",
                 schedule: String = "custom", entry: String = "diffusion_plugin_init", returns: String = "&plugin") throws
    {
        let source = """
            #include "diffusion_plugin.h"
            static int betas(const dfn_host *h, const dfn_options *o, int32_t n, double *b, char *e, size_t s) {
                for (int32_t i = 0; i < n; i++) b[i] = 0.01;
                return DFN_OK;
            }
            static const dfn_schedule one = {DFN_ABI_VERSION, sizeof(dfn_schedule), "\(schedule)", "test", betas};
            static const dfn_schedule *const list[] = {&one};
            static const dfn_plugin plugin = {\(abi), sizeof(dfn_plugin), "test", "0", 1, list, 0, 0, 0, 0};
            const dfn_plugin *\(entry)(const dfn_host *host) { return \(returns); }
            """
        try compile(source: source, name, in: directory)
    }

    /// Compiles one C file into the plugin `name` in `directory`; `strict`
    /// makes every warning an error (for code users copy).
    func compile(source: String, _ name: String, in directory: String, strict: Bool = false) throws {
        let file = "\(directory)/\(name).c"
        try source.write(toFile: file, atomically: true, encoding: .utf8)
        let compiler = Process()
        compiler.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compiler.arguments = ["cc", "-shared", "-fPIC"] + (strict ? ["-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"] : [])
            + ["-I\(TestSupport.packageRoot)/Sources/DiffusionPluginABI", "-o", "\(directory)/\(name)", file, "-lm"]
        try compiler.run()
        compiler.waitUntilExit()
        #expect(compiler.terminationStatus == 0, "cc failed for \(name)")
        try FileManager.default.removeItem(atPath: file)
        chmod("\(directory)/\(name)", 0o755)
    }

    /// docs/plugins.md's C sampler, built from the page itself, loads as ABI 1.1
    /// and samples as `euler` does with its defaults.
    @Test func theDocumentedCSamplerBuildsAndStepsAsEuler() throws {
        let page = try String(contentsOfFile: "\(TestSupport.packageRoot)/docs/plugins.md", encoding: .utf8)
        let source = try #require(page.components(separatedBy: "```c\n").dropFirst().first?.components(separatedBy: "```").first)
        let directory = try TestSupport.temporaryDirectory()
        try compile(source: source, "libdiffusion-plugin-euler-c.so", in: directory, strict: true)
        let registry = PluginRegistry(directories: [directory])
        #expect(registry.problems.isEmpty, "\(registry.problems)")
        #expect(registry.samplers["euler_c"]?.minor == 1)
        let options = ComponentOptions(modelConfig: ["beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012],
                                       overrides: [:])
        let levels = try NoiseLevels(options: options, registry: TestSupport.registry)
        let documented = try Sampler(name: "euler_c", registry: registry, options: options, levels: levels)
        let shipped = try Sampler(name: "euler", registry: TestSupport.registry, options: options, levels: levels)
        try documented.setTimesteps(12)
        try shipped.setTimesteps(12)
        #expect(documented.evaluations.count == 12 && shipped.evaluations.count == 12)
        for (a, b) in zip(documented.evaluations, shipped.evaluations) {
            // euler keeps diffusers' float32 timesteps; the C file computes them in double
            #expect(a.step == b.step && abs(a.time - b.time) < 1e-3 && abs(a.inputScale / b.inputScale - 1) < 1e-6)
        }
        #expect(abs(documented.initNoiseSigma / shipped.initNoiseSigma - 1) < 1e-6)
        var x = Tensor(shape: [1, 4], scalars: [0.5, -1, 2, 0]).scaled(by: Float(shipped.initNoiseSigma))
        var y = x
        for i in 0..<12 {
            let output = Tensor(shape: [1, 4], scalars: (0..<4).map { Float(sin(Double(i * 4 + $0))) })
            x = try documented.step(i, modelOutput: output, sample: x, generators: [ImageGenerator(seed: 1)]).previous
            y = try shipped.step(i, modelOutput: output, sample: y, generators: [ImageGenerator(seed: 1)]).previous
        }
        #expect(x.maxAbsDifference(y) < 1e-4, "\(x.maxAbsDifference(y))")
        #expect(throws: DiffusionError("sampler euler_c: sampler state version 9 for 12 steps is not this one's")) {
            try documented.restoreState([9, 0, 0, 0, 12, 0, 0, 0])
        }
    }

    /// A 1.1 sampler must fill the slots 1.1 added; a scheduler class already
    /// declared by another sampler stays with the first.
    @Test func aSamplersNewSlotsAreRequiredAndAClassHasOneSampler() throws {
        let source = """
            #include "diffusion_plugin.h"
            static int token;
            static void *create(const dfn_host *h, const dfn_options *o, const dfn_noise_levels *l, char *e, size_t s) { return &token; }
            static void destroy(void *i) {}
            static int32_t timesteps(void *i, int32_t n, int32_t *t, int32_t c, char *e, size_t s) { return n; }
            static int step(void *i, int32_t k, int32_t n, int64_t z, const float *m, const float *x, float *p, float *o,
                            dfn_generator *const *g, char *e, size_t s) { return DFN_OK; }
            static int64_t save(void *i, void *b, int64_t c) { return 0; }
            static int restore(void *i, const void *b, int64_t n, char *e, size_t s) { return DFN_OK; }
            static int describe(void *i, int32_t k, dfn_evaluation *v, char *e, size_t s) { return DFN_OK; }
            static double sigma(void *i) { return 1; }
            static const char *const ddim_class[] = {"DDIMScheduler", 0};
            static const dfn_sampler undescribed = {DFN_ABI_VERSION, sizeof(dfn_sampler), "undescribed", "", create, destroy,
                                                    timesteps, step, save, restore, 0, 0, sigma};
            static const dfn_sampler claimer = {DFN_ABI_VERSION, sizeof(dfn_sampler), "claimer", "", create, destroy,
                                                timesteps, step, save, restore, ddim_class, describe, sigma};
            static const dfn_sampler *const list[] = {&undescribed, &claimer};
            static const dfn_plugin plugin = {DFN_ABI_VERSION, sizeof(dfn_plugin), "test", "0", 0, 0, 2, list, 0, 0};
            const dfn_plugin *diffusion_plugin_init(const dfn_host *host) { return &plugin; }
            """
        let directory = try TestSupport.temporaryDirectory()
        try compile(source: source, "libdiffusion-plugin-zz-test.so", in: directory)
        let registry = PluginRegistry(directories: [TestSupport.buildDirectory, directory])
        #expect(registry.problems.contains { $0.hasSuffix("component undescribed: its required slot describe is NULL") },
                "\(registry.problems)")
        #expect(registry.problems.contains { $0.hasSuffix("sampler claimer claims DDIMScheduler, which sampler ddim already implements") })
        #expect(registry.samplers["claimer"] != nil && registry.samplerClasses["DDIMScheduler"] == "ddim")
    }

    @Test func refusesBadPluginsAndKeepsGoing() throws {
        let directory = try TestSupport.temporaryDirectory()
        try compile("libdiffusion-plugin-good.so", in: directory, schedule: "good")
        try compile("libdiffusion-plugin-major.so", in: directory, abi: "(2u << 16)")
        try compile("libdiffusion-plugin-minor.so", in: directory, abi: "((1u << 16) | 99u)")
        try compile("libdiffusion-plugin-declines.so", in: directory, returns: "0")
        try compile("libdiffusion-plugin-nosymbol.so", in: directory, entry: "some_other_name")
        try compile("libdiffusion-plugin-twin.so", in: directory, schedule: "good")
        try compile("libdiffusion-plugin-open.so", in: directory, schedule: "open")
        chmod("\(directory)/libdiffusion-plugin-open.so", 0o757)
        try compile("libdiffusion-unrelated.so", in: directory, abi: "(7u << 16)")
        FileManager.default.createFile(atPath: "\(directory)/libdiffusion-plugin-junk.so", contents: Data("not ELF".utf8))

        let registry = PluginRegistry(directories: [directory, "\(directory)/missing"])
        #expect(Set(registry.schedules.keys) == ["good"])
        func problem(_ file: String) -> String? { registry.problems.first { $0.contains("/\(file) ") } }
        #expect(problem("libdiffusion-plugin-major.so")?.contains("built for plugin ABI 2.0, this host speaks 1.1") == true)
        #expect(problem("libdiffusion-plugin-minor.so")?.contains("built for plugin ABI 1.99, this host speaks 1.1") == true)
        #expect(problem("libdiffusion-plugin-declines.so")?.contains("declined this host") == true)
        #expect(problem("libdiffusion-plugin-nosymbol.so")?.contains("does not export diffusion_plugin_init") == true)
        #expect(problem("libdiffusion-plugin-twin.so")?.contains(
            "component good is already provided by \(directory)/libdiffusion-plugin-good.so") == true)
        #expect(problem("libdiffusion-plugin-open.so")?.contains("world-writable") == true)
        #expect(problem("libdiffusion-plugin-junk.so") != nil)
        #expect(registry.problems.count == 7, "\(registry.problems)")
        #expect(!registry.problems.contains { $0.contains("unrelated") })
    }

    /// A directory others may write is not scanned; a link is not followed; a
    /// directory reached through two names loads once.
    @Test func directoriesAndLinksAreCheckedToo() throws {
        let directory = try TestSupport.temporaryDirectory()
        try compile("libdiffusion-plugin-one.so", in: directory, schedule: "one")
        #expect(symlink("\(directory)/libdiffusion-plugin-one.so", "\(directory)/libdiffusion-plugin-link.so") == 0)
        #expect(symlink(directory, "\(directory)-alias") == 0)
        defer { unlink("\(directory)-alias") }
        let twice = PluginRegistry(directories: [directory, "\(directory)-alias"])
        #expect(twice.libraries.count == 1 && Set(twice.schedules.keys) == ["one"])
        #expect(twice.problems.count == 1 && twice.problems[0].contains("libdiffusion-plugin-link.so not loaded: a symbolic link"),
                "\(twice.problems)")
        chmod(directory, 0o777)
        let open = PluginRegistry(directories: [directory])
        #expect(open.libraries.isEmpty && open.problems == ["plugin \(directory) not loaded: it is world-writable"])
    }

    /// The size rule as the header states it, on a host of minor 1 whose struct
    /// grew from 100 to 120 bytes: an older-minor plugin's smaller struct loads.
    @Test func anOlderMinorsSmallerStructIsRead() {
        let host = UInt32(1 << 16 | 1), sizes = [100, 120]
        #expect(PluginRegistry.versionProblem(1 << 16, 100, sizes: sizes, host: host) == nil)
        #expect(PluginRegistry.versionProblem(1 << 16 | 1, 120, sizes: sizes, host: host) == nil)
        #expect(PluginRegistry.versionProblem(1 << 16 | 1, 100, sizes: sizes, host: host)
                == "its struct is 100 bytes, smaller than the 120 that ABI 1.1 defines")
        #expect(PluginRegistry.versionProblem(1 << 16 | 2, 140, sizes: sizes, host: host)
                == "built for plugin ABI 1.2, this host speaks 1.1")
        #expect(PluginRegistry.versionProblem(1 << 16, 96, sizes: sizes, host: host) != nil)
    }

    @Test(.enabled(if: geteuid() == 0, "only root can give a file away"))
    func refusesAFileOwnedByAnotherUser() throws {
        let directory = try TestSupport.temporaryDirectory()
        try compile("libdiffusion-plugin-foreign.so", in: directory)
        #expect(chown("\(directory)/libdiffusion-plugin-foreign.so", 4242, 4242) == 0)
        let registry = PluginRegistry(directories: [directory])
        #expect(registry.schedules.isEmpty)
        #expect(registry.problems.first?.contains("owned by uid 4242, neither root nor this user") == true)
    }
}
