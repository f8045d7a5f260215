import DiffusionKernels
import DiffusionModels
import Foundation

/// `diffusiond render`: one job file rendered into one directory, no daemon.
public struct OneShotRender {
    public var pluginDirectories = PluginRegistry.defaultDirectories()
    /// Where a model *name* is looked up (a path, relative to the job file, is tried first).
    public var modelDirectories: [String] = []
    public var threads = ProcessInfo.processInfo.activeProcessorCount
    public var limits = RenderLimits()

    public init() {}

    /// Renders `jobPath` into `outputDirectory`, reporting progress; returns the render.
    @discardableResult
    public func run(jobPath: String, outputDirectory: String, progress: (Int, Int) -> Void = { _, _ in }) throws -> Render {
        guard let data = FileManager.default.contents(atPath: jobPath) else { throw RenderError("\(jobPath): cannot read the job file") }
        let job = try Job(json: data, source: jobPath)
        let base = URL(fileURLWithPath: jobPath).deletingLastPathComponent().path
        let model = try ModelResolver(directories: modelDirectories).load(job.model, relativeTo: base)
        var initNoise: Tensor?
        switch job.initNoise {
        case .path(let path)?:
            let resolved = path.hasPrefix("/") ? path : "\(base)/\(path)"
            do { initNoise = try NPYFile.read(path: resolved) } catch { throw RenderError("init_noise: \(error)") }
        case .inline(let bytes)?:
            do { initNoise = try NPYFile.decode(bytes, path: "init_noise") } catch { throw RenderError("init_noise: \(error)") }
        case nil:
            break
        }
        let registry = PluginRegistry(directories: pluginDirectories)
        let render = try Render(job: job, model: model, registry: registry, runtime: KernelRuntime(threadCount: threads),
                                limits: limits, initNoise: initNoise)
        let samples = try render.run(progress: progress)
        try RenderOutput.write(render, samples: samples, to: outputDirectory)
        return render
    }
}

/// Finds a job's model: a directory path, or a name under the model directories.
public struct ModelResolver: Sendable {
    public let directories: [String]

    public init(directories: [String]) { self.directories = directories }

    public func load(_ model: String, relativeTo base: String?) throws -> LoadedModel {
        var candidates: [String] = []
        if let base, model.contains("/") || model.hasPrefix(".") {
            candidates.append(model.hasPrefix("/") ? model : "\(base)/\(model)")
        }
        if !model.contains("/") { candidates += directories.map { "\($0)/\(model)" } }
        candidates = candidates.map { URL(fileURLWithPath: $0).standardized.path }
        guard let path = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw RenderError("model \"\(model)\" not found (looked in: \(candidates.joined(separator: ", ")))")
        }
        do {
            return try ModelDirectory(path: path).load()
        } catch let error as ModelError {
            throw RenderError(error.message)
        }
    }
}
