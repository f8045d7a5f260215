import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation
import Logging
import Synchronization

/// A job handed to the worker, with the flags the loop may raise while it runs.
struct RenderAssignment: Sendable {
    let id: Int
    let job: Job
    let outputDirectory: String
    let owner: uid_t
    let timeLimit: Double
    let control: RenderControl
}

final class RenderControl: Sendable {
    /// Cancel: the job ends `canceled` at the next step.
    let cancel = Atomic<Bool>(false)
    /// Stop (SIGTERM): the step in flight is abandoned and the job stays resumable.
    let stop = Atomic<Bool>(false)
}

/// What the worker reports to the loop, in order.
enum WorkerEvent: Sendable {
    case progress(id: Int, step: Int, total: Int)
    case succeeded(id: Int, images: Int)
    case failed(id: Int, error: String, retryable: Bool)
    case canceled(id: Int)
    case abandoned(id: Int)
}

/// The render thread: one job at a time, on a kernel runtime of its own (not
/// libuv's thread pool). It takes assignments from `assign` and reports through
/// a locked queue and `uv_async_send`, so the loop never waits on a render.
final class RenderWorker: @unchecked Sendable {
    private let inbox = NSCondition()
    private var pending: [RenderAssignment] = []
    private var shuttingDown = false
    private let outbox = Mutex<[WorkerEvent]>([])
    /// nil once the loop has gone (SIGTERM while a step runs).
    private let wake: Mutex<LoopAsync?>
    private let registry: Mutex<PluginRegistry>
    private let models: ModelCache
    private let limits: RenderLimits
    private let threads: Int
    private let log = Logger(label: "diffusiond.worker")

    init(wake: LoopAsync, registry: PluginRegistry, modelDirectories: [String], cacheBytes: Int, limits: RenderLimits,
         threads: Int)
    {
        self.wake = Mutex(wake)
        self.registry = Mutex(registry)
        models = ModelCache(resolver: ModelResolver(directories: modelDirectories), capacityBytes: cacheBytes)
        self.limits = limits
        self.threads = threads
    }

    func start() {
        let thread = Thread { [self] in
            let runtime = KernelRuntime(threadCount: threads)
            while let assignment = nextAssignment() { render(assignment, runtime) }
        }
        thread.name = "diffusiond-render"
        thread.start()
    }

    func assign(_ assignment: RenderAssignment) {
        inbox.lock()
        pending.append(assignment)
        inbox.signal()
        inbox.unlock()
    }

    /// The loop is closing: later reports go nowhere, and the thread is left to
    /// the process's exit.
    func detach() {
        wake.withLock { $0 = nil }
        inbox.lock()
        shuttingDown = true
        inbox.signal()
        inbox.unlock()
    }

    /// Plugins rescanned (SIGHUP): jobs started from now on use them.
    func replaceRegistry(_ fresh: PluginRegistry) { registry.withLock { $0 = fresh } }

    /// The events since the last call (the loop calls this on each wake-up).
    func takeEvents() -> [WorkerEvent] { outbox.withLock { events in defer { events = [] }; return events } }

    private func nextAssignment() -> RenderAssignment? {
        inbox.lock()
        defer { inbox.unlock() }
        while pending.isEmpty && !shuttingDown { inbox.wait() }
        return shuttingDown ? nil : pending.removeFirst()
    }

    private func report(_ event: WorkerEvent) {
        outbox.withLock { $0.append(event) }
        wake.withLock { $0?.send() }
    }

    private func render(_ assignment: RenderAssignment, _ runtime: KernelRuntime) {
        let id = assignment.id
        let started = DispatchTime.now().uptimeNanoseconds
        let render: Render
        do {
            let model = try models.model(named: assignment.job.model)
            var initNoise: Tensor?
            if case .inline(let bytes)? = assignment.job.initNoise {
                do { initNoise = try NPYFile.decode(bytes, path: "init_noise") } catch { throw RenderError("init_noise: \(error)") }
            }
            render = try Render(job: assignment.job, model: model, registry: registry.withLock { $0 }, runtime: runtime, limits: limits,
                                initNoise: initNoise)
        } catch {
            report(.failed(id: id, error: "\(error)", retryable: !(error is RenderError)))
            return
        }
        do {
            while !render.isFinished {
                if assignment.control.cancel.load(ordering: .relaxed) { report(.canceled(id: id)); return }
                if assignment.control.stop.load(ordering: .relaxed) { report(.abandoned(id: id)); return }
                let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
                if elapsed > assignment.timeLimit {
                    report(.failed(id: id, error: "the time limit of \(Self.seconds(assignment.timeLimit)) was reached at step \(render.completedSteps) of \(render.timesteps.count)", retryable: false))
                    return
                }
                try render.step()
                report(.progress(id: id, step: render.completedSteps, total: render.timesteps.count))
            }
        } catch {
            report(.failed(id: id, error: "\(error)", retryable: false))
            return
        }
        do {
            try OutputDirectory.publish(render, to: assignment.outputDirectory, owner: assignment.owner)
        } catch let error as OutputDirectory.DiskFull {
            report(.failed(id: id, error: error.message, retryable: false))
            return
        } catch {
            report(.failed(id: id, error: "\(error)", retryable: true))
            return
        }
        log.info("job \(id): \(render.job.count) image(s) in \(Self.seconds(render.stepSeconds))")
        report(.succeeded(id: id, images: render.job.count))
    }

    static func seconds(_ value: Double) -> String { String(format: "%.1f s", value) }
}

/// Loaded models by name, kept while they fit in the configured memory
/// (the size of their weight files); the least recently used goes first.
final class ModelCache: @unchecked Sendable {
    private let resolver: ModelResolver
    private let capacityBytes: Int
    private var entries: [String: (model: LoadedModel, bytes: Int, used: Int)] = [:]
    private var clock = 0

    init(resolver: ModelResolver, capacityBytes: Int) {
        self.resolver = resolver
        self.capacityBytes = capacityBytes
    }

    func model(named name: String) throws -> LoadedModel {
        clock += 1
        if let entry = entries[name] {
            entries[name]!.used = clock
            return entry.model
        }
        let model = try resolver.load(name, relativeTo: nil)
        let bytes = model.directory.map { Self.weightBytes($0.path) } ?? 0
        entries[name] = (model, bytes, clock)
        while entries.values.reduce(0, { $0 + $1.bytes }) > capacityBytes, entries.count > 1,
              let oldest = entries.filter({ $0.key != name }).min(by: { $0.value.used < $1.value.used })?.key
        {
            entries[oldest] = nil
        }
        return model
    }

    static func weightBytes(_ directory: String) -> Int {
        guard let files = FileManager.default.enumerator(atPath: directory) else { return 0 }
        var total = 0
        for case let file as String in files where file.hasSuffix(".safetensors") {
            total += (try? FileManager.default.attributesOfItem(atPath: "\(directory)/\(file)")[.size] as? Int) ?? 0
        }
        return total
    }
}
