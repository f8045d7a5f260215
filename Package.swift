// swift-tools-version: 6.1
// diffusiond: a batch render daemon for diffusion models on Linux CPUs.
// The layers, bottom to top, are described in docs/architecture.md.
import PackageDescription

/// Hot loops are written with SIMD types; without a native target the compiler
/// lowers them to scalar libm calls instead of AVX-512.
let nativeCode: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "native"])]

let package = Package(
    name: "diffusiond",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "diffusion-bench", targets: ["diffusion-bench"]),
    ],
    targets: [
        // C libraries, each behind a module map (system libraries) or a small shim.
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .target(name: "CPNG", linkerSettings: [.linkedLibrary("png16")]),

        // The kernel runtime: tensors, ops, thread pool, RNG, tensor file formats.
        .target(name: "DiffusionKernels", dependencies: ["COpenBLAS"], swiftSettings: nativeCode),
        // Models on top of the kernels: UNet2DModel and model-directory loading.
        .target(name: "DiffusionModels", dependencies: ["DiffusionKernels"], swiftSettings: nativeCode),

        .executableTarget(name: "diffusion-bench", dependencies: ["DiffusionModels"], swiftSettings: nativeCode),

        .testTarget(name: "CPNGTests", dependencies: ["CPNG"]),
        .testTarget(name: "DiffusionKernelsTests", dependencies: ["DiffusionKernels"]),
        .testTarget(
            name: "DiffusionModelsTests", dependencies: ["DiffusionModels"],
            resources: [.copy("Fixtures")]),
    ],
    swiftLanguageModes: [.v6]
)
