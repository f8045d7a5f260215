@testable import DiffusionRender
import Foundation
import Testing

@Suite struct PluginRegistryTests {
    @Test func loadsThePackagesPlugins() {
        let registry = TestSupport.registry
        #expect(registry.problems.isEmpty, "\(registry.problems)")
        #expect(Set(registry.schedules.keys) == ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
        #expect(Set(registry.samplers.keys) == ["ddpm", "ddim", "euler", "euler_ancestral", "heun", "lms", "dpmsolver++",
                                                 "unipc", "pndm", "score_sde_ve", "langevin"])
        #expect(registry.samplerClasses == [
            "DDPMScheduler": "ddpm", "DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler",
            "EulerAncestralDiscreteScheduler": "euler_ancestral", "HeunDiscreteScheduler": "heun",
            "LMSDiscreteScheduler": "lms", "DPMSolverMultistepScheduler": "dpmsolver++",
            "UniPCMultistepScheduler": "unipc", "PNDMScheduler": "pndm", "ScoreSdeVeScheduler": "score_sde_ve",
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
        let file = "\(directory)/\(name).c"
        try source.write(toFile: file, atomically: true, encoding: .utf8)
        let compiler = Process()
        compiler.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compiler.arguments = ["cc", "-shared", "-fPIC", "-I\(TestSupport.packageRoot)/Sources/DiffusionPluginABI",
                              "-o", "\(directory)/\(name)", file]
        try compiler.run()
        compiler.waitUntilExit()
        #expect(compiler.terminationStatus == 0, "cc failed for \(name)")
        try FileManager.default.removeItem(atPath: file)
        chmod("\(directory)/\(name)", 0o755)
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
