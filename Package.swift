// swift-tools-version: 6.1
// diffusiond: a batch render daemon for diffusion models on Linux CPUs.
// The layers, bottom to top, are described in docs/architecture.md.
import PackageDescription

/// Hot loops are written with SIMD types; without a native target the compiler
/// lowers them to scalar libm calls instead of AVX-512.
let nativeCode: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "native"])]

/// Numeric loops (kernels, models, samplers) are optimized in debug builds too:
/// the tests run thousands of model evaluations, which unoptimized code makes
/// minutes slower.
let numericCode: [SwiftSetting] = nativeCode + [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "diffusiond",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "diffusiond", targets: ["diffusiond"]),
        .executable(name: "diffctl", targets: ["diffctl"]),
        .executable(name: "diffusion-bench", targets: ["diffusion-bench"]),
        .executable(name: "diffusion-fuzz", targets: ["diffusion-fuzz"]),
        // Plugins: libdiffusion-plugin-NAME.so, loaded by the host with dlopen.
        .library(name: "diffusion-plugin-schedules", type: .dynamic, targets: ["SchedulesPlugin"]),
        .library(name: "diffusion-plugin-sigmoid-schedule", type: .dynamic, targets: ["SigmoidSchedulePlugin"]),
        .library(name: "diffusion-plugin-ddpm", type: .dynamic, targets: ["DDPMPlugin"]),
        .library(name: "diffusion-plugin-ddim", type: .dynamic, targets: ["DDIMPlugin"]),
        .library(name: "diffusion-plugin-guidance", type: .dynamic, targets: ["GuidancePlugin"]),
        .library(name: "diffusion-plugin-samplers", type: .dynamic, targets: ["SamplersPlugin"]),
        .library(name: "diffusion-plugin-score", type: .dynamic, targets: ["ScorePlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // C libraries, each behind a module map (system libraries) or a small shim.
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CPostgres", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .target(name: "CPNG", linkerSettings: [.linkedLibrary("png16")]),
        .target(name: "CAffinity"),
        .target(name: "CBLASCore", linkerSettings: [.linkedLibrary("openblas")]),
        .target(name: "CSocket"),

        // The plugin contract: one C header, and helpers for plugins written in Swift.
        .systemLibrary(name: "DiffusionPluginABI"),
        .target(name: "DiffusionPluginKit", dependencies: ["DiffusionPluginABI"]),
        .target(name: "SchedulesPlugin", dependencies: ["DiffusionPluginKit"], path: "Plugins/schedules"),
        .target(name: "SigmoidSchedulePlugin", dependencies: ["DiffusionPluginABI"], path: "Plugins/sigmoid-schedule",
                publicHeadersPath: ".", cSettings: [.headerSearchPath("../../Sources/DiffusionPluginABI")]),
        .target(name: "DDPMPlugin", dependencies: ["DiffusionPluginKit"], path: "Plugins/ddpm", swiftSettings: numericCode),
        .target(name: "DDIMPlugin", dependencies: ["DiffusionPluginKit"], path: "Plugins/ddim", swiftSettings: numericCode),
        .target(name: "GuidancePlugin", dependencies: ["DiffusionPluginKit"], path: "Plugins/guidance"),
        .target(name: "SamplersPlugin", dependencies: ["DiffusionPluginKit"], path: "Plugins/samplers", swiftSettings: numericCode),
        .target(name: "ScorePlugin", dependencies: ["DiffusionPluginKit"], path: "Plugins/score", swiftSettings: numericCode),

        // The kernel runtime: tensors, ops, thread pool, RNG, tensor file formats.
        .target(name: "DiffusionKernels", dependencies: ["COpenBLAS", "CAffinity", "CBLASCore"], swiftSettings: numericCode),
        // Models on top of the kernels: UNet2DModel and model-directory loading.
        .target(name: "DiffusionModels", dependencies: ["DiffusionKernels"], swiftSettings: numericCode),

        // The render layer: plugin host and loader (the pipeline grows here).
        .target(name: "DiffusionRender", dependencies: ["DiffusionModels", "DiffusionPluginABI", "CPNG"],
                swiftSettings: nativeCode),

        // The daemon: libuv loop, spool, socket protocol, the queue (SQLite or PostgreSQL), render worker; and its client.
        .target(name: "DiffusionDaemon", dependencies: [
            "DiffusionRender", "CUV", "CSQLite", "CPostgres", "CSocket", "CPNG", .product(name: "Logging", package: "swift-log"),
        ]),

        .executableTarget(
            name: "diffusiond",
            dependencies: ["DiffusionDaemon", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "diffctl",
            dependencies: ["DiffusionDaemon", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "diffusion-bench", dependencies: ["DiffusionDaemon", "DiffusionTestSupport"], swiftSettings: nativeCode),
        // What the tests and the benchmarks start for themselves: a private PostgreSQL server.
        .target(name: "DiffusionTestSupport", dependencies: ["DiffusionKernels"]),
        // The parsers under libFuzzer (`make fuzz`), or a corpus replayed once.
        .executableTarget(name: "diffusion-fuzz", dependencies: ["DiffusionDaemon"]),

        .testTarget(name: "CPNGTests", dependencies: ["CPNG"]),
        .testTarget(name: "DiffusionPluginKitTests", dependencies: ["DiffusionPluginKit"]),
        .testTarget(name: "DiffusionRenderTests", dependencies: ["DiffusionRender"], resources: [.copy("Fixtures")]),
        .testTarget(name: "DiffusionKernelsTests", dependencies: ["DiffusionKernels"]),
        .testTarget(name: "DiffusionDaemonTests", dependencies: ["DiffusionDaemon", "DiffusionTestSupport"]),
        .testTarget(
            name: "DiffusionModelsTests", dependencies: ["DiffusionModels"],
            resources: [.copy("Fixtures")]),
    ],
    swiftLanguageModes: [.v6]
)
