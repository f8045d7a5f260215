import DiffusionKernels
import DiffusionModels
import Foundation

/// `diffusiond render`: one job file rendered into one directory, no daemon.
public struct OneShotRender {
    public var pluginDirectories = PluginRegistry.defaultDirectories()
    /// Where a model *name* is looked up (a path, relative to the job file, is tried first).
    public var modelDirectories = [ModelResolver.installedModels]
    public var threads = ProcessInfo.processInfo.activeProcessorCount
    public var limits = RenderLimits()

    public init() {}

    /// Plans `jobPath` as `run` would, reading no weights: `diffusiond render --dry-run`.
    public func plan(jobPath: String) throws -> CascadePlan {
        let (job, base) = try readJob(jobPath)
        return try makePlan(job, base: base)
    }

    /// Renders `jobPath` into `outputDirectory`, reporting progress (stage,
    /// step, total within the stage); returns the render.
    @discardableResult
    public func run(jobPath: String, outputDirectory: String, progress: (Int, Int, Int) -> Void = { _, _, _ in }) throws
        -> CascadeRender
    {
        let (job, base) = try readJob(jobPath)
        let resolver = ModelResolver(directories: modelDirectories)
        let render = try CascadeRender(plan: try makePlan(job, base: base), runtime: KernelRuntime(threadCount: threads)) {
            try resolver.load($0, relativeTo: base)
        }
        try render.run(progress: progress)
        try RenderOutput.write(render, to: outputDirectory)
        return render
    }

    private func readJob(_ jobPath: String) throws -> (Job, base: String) {
        guard let data = FileManager.default.contents(atPath: jobPath) else { throw DiffusionError("\(jobPath): cannot read the job file") }
        var job = try Job(json: data, source: jobPath)
        let base = URL(fileURLWithPath: jobPath).deletingLastPathComponent().path
        // an init_image path is the job file's, as init_noise's
        if case .path(let path)? = job.initImage, !path.hasPrefix("/") { job.initImage = .path("\(base)/\(path)") }
        if case .path(let path)? = job.image, !path.hasPrefix("/") { job.image = .path("\(base)/\(path)") }
        return (job, base)
    }

    private func makePlan(_ job: Job, base: String) throws -> CascadePlan {
        let resolver = ModelResolver(directories: modelDirectories)
        var initNoise: Tensor?
        switch job.initNoise {
        case .path(let path)?:
            let resolved = path.hasPrefix("/") ? path : "\(base)/\(path)"
            do { initNoise = try NPYFile.read(path: resolved) } catch { throw DiffusionError("init_noise: \(error)") }
        case .inline(let bytes)?:
            initNoise = try Job.decodeInitNoise(bytes)
        case nil:
            break
        }
        return try CascadePlan(job: job, describe: { try resolver.directory($0, relativeTo: base).describe() },
                               registry: PluginRegistry(directories: pluginDirectories), limits: limits, initNoise: initNoise)
    }
}

/// Finds a job's model: a directory path, or a name under the model directories.
public struct ModelResolver: Sendable {
    public let directories: [String]

    public init(directories: [String]) { self.directories = directories }

    /// PREFIX/share/diffusiond/models for a program installed in PREFIX/bin.
    public static var installedModels: String {
        URL(fileURLWithPath: "\(PluginRegistry.executableDirectory)/../share/diffusiond/models").standardized.path
    }

    /// The model directory `model` names: a path (with a `/`, or starting with
    /// `.`) relative to `base`, or a name under `directories`.
    public func directory(_ model: String, relativeTo base: String?) throws -> ModelDirectory {
        var candidates: [String] = []
        if let base, model.contains("/") || model.hasPrefix(".") {
            candidates.append(model.hasPrefix("/") ? model : "\(base)/\(model)")
        }
        if !model.contains("/") { candidates += directories.map { "\($0)/\(model)" } }
        candidates = candidates.map { URL(fileURLWithPath: $0).standardized.path }
        guard let path = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            let looked = candidates.isEmpty ? "no model directories are configured" : "looked in: \(candidates.joined(separator: ", "))"
            throw DiffusionError("model \"\(model)\" not found (\(looked)); a directory beside the job is written ./\(model)")
        }
        return try ModelDirectory(path: path)
    }

    public func load(_ model: String, relativeTo base: String?) throws -> LoadedModel {
        try directory(model, relativeTo: base).load()
    }
}
