import CPNG
import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation

/// Every parser a user's bytes reach, as one entry point each: `diffusion-fuzz`
/// (`make fuzz`) drives them under libFuzzer and AddressSanitizer, and the
/// corpus tests replay every input that ever crashed one. Each takes untrusted
/// bytes and must return or throw, never crash, hang or leak.
public enum FuzzTargets {
    public static let names = ["job", "toml", "safetensors", "npy", "framing", "png", "checkpoint"]

    /// Runs target `name` on `data`; false for an unknown name.
    public static func run(_ name: String, _ data: Data) -> Bool {
        switch name {
        case "job": _ = try? Job(json: data, source: "fuzz")
        case "toml": _ = try? DaemonConfig(contents: data, path: "/fuzz/diffusiond.toml")
        case "safetensors": withFile(data) { path in
            guard let file = try? SafeTensorsFile(path: path) else { return }
            for name in file.entries.keys.sorted().prefix(8) { _ = file.tensor(name) }
        }
        case "npy": _ = try? NPYFile.decode(data)
        case "framing":
            // The first byte picks the limit, so long-line handling is reached with small inputs.
            var framer = LineFramer(maxLineBytes: Int(data.first ?? 0) + 1)
            data.dropFirst().withUnsafeBytes { framer.feed($0, handle: { _ in }, oversize: {}) }
        case "png": withFile(data) { path in
            var (width, height, channels) = (UInt32(0), UInt32(0), Int32(0))
            var error = [CChar](repeating: 0, count: 256)
            guard dfn_png_read(path, nil, 0, &width, &height, &channels, &error, error.count) == 0 else { return }
            let size = Int(width) * Int(height) * Int(channels)
            guard size <= 1 << 24 else { return }
            var pixels = [UInt8](repeating: 0, count: size)
            _ = dfn_png_read(path, &pixels, pixels.count, &width, &height, &channels, &error, error.count)
        }
        case "checkpoint": withFile(data) { path in
            guard let checkpoint = try? CheckpointFiles.read(path), let render = checkpointRender else { return }
            _ = try? render.resume(from: checkpoint, jobKey: checkpoint.job)
        }
        default: return false
        }
        return true
    }

    /// Readers of files get a file: one per process, rewritten for each input.
    private static func withFile(_ data: Data, _ body: (String) -> Void) {
        let path = "\(NSTemporaryDirectory())/diffusion-fuzz-\(getpid())"
        guard FileManager.default.createFile(atPath: path, contents: data) else { return }
        body(path)
    }

    /// A tiny render (a Gaussian mixture) that fuzzed checkpoints try to resume.
    private static let checkpointRender: Render? = {
        let mixture = try? GaussianMixture(json: Data(#"{"shape": [1, 2, 2], "components": [{"mean": 0, "std": 1, "weight": 1, "label": 0}]}"#.utf8),
                                           source: "fuzz")
        guard let mixture else { return nil }
        let description = ModelDescription(
            sampleShape: mixture.sampleShape, classCount: mixture.classCount, nullClass: mixture.classCount.map { $0 - 1 },
            hasClassifier: true, recommendedGuidanceScale: nil, schedulerConfigData: nil, schedulerConfigSource: "fuzz")
        let model = LoadedModel(directory: nil, description: description, denoiser: mixture, classifier: mixture, contentHash: "fuzz")
        guard let job = try? Job(json: Data(#"{"model": "m", "sampler": "ddim", "steps": 4, "seed": 1}"#.utf8), source: "fuzz") else { return nil }
        return try? Render(job: job, model: model, registry: PluginRegistry(directories: PluginRegistry.defaultDirectories()),
                           runtime: KernelRuntime(threadCount: 1), limits: RenderLimits(), initNoise: nil)
    }()
}
