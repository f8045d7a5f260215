import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation
import Logging
import Synchronization

/// A job handed to the worker, with where its files go and the flags the loop
/// may raise while it runs.
struct RenderAssignment: Sendable {
    let id: Int
    let job: Job
    /// Identifies the job's content in its checkpoints.
    let jobKey: String
    /// The claim it runs under: every checkpoint and its outputs name it.
    let lease: Lease
    let outputs: String
    let previewPath: String
    /// Steps between checkpoints and between previews (0: none).
    let checkpointEvery: Int
    let previewEvery: Int
    let owner: uid_t
    let timeLimit: Double
    let control: RenderControl
}

final class RenderControl: Sendable {
    /// Cancel: the job ends `canceled` at the next step.
    let cancel = Atomic<Bool>(false)
    /// Stop (SIGTERM, or the lease was lost): the job is dropped and its last checkpoint kept.
    let stop = Atomic<Bool>(false)
}

/// What the worker reports to the loop, in order.
enum WorkerEvent: Sendable {
    /// `step`: steps done over every stage.
    case resumed(id: Int, step: Int)
    /// Something the job's events should record (and the log say).
    case note(id: Int, String)
    /// The step and total within the stage (1-based, of `stages`); `done` and
    /// `overall`: steps over every stage, for the ETA.
    case progress(id: Int, step: Int, total: Int, stage: Int, stages: Int, done: Int, overall: Int, preview: String?)
    /// One batched model step, for the metrics.
    case stepped(model: String, jobs: Int, images: Int, seconds: Double, cacheBytes: Int)
    /// Its outputs wait in the partial directory of `lease`.
    case succeeded(lease: Lease, images: Int)
    case failed(id: Int, error: String, retryable: Bool)
    case canceled(id: Int)
    case abandoned(id: Int)
    /// A checkpoint was refused: another claim holds the job now.
    case leaseLost(id: Int)

    /// The job's last report.
    var isEnd: Bool {
        switch self {
        case .progress, .resumed, .note, .stepped: return false
        case .succeeded, .failed, .canceled, .abandoned, .leaseLost: return true
        }
    }
}

/// The render thread, on a kernel runtime of its own (not libuv's thread pool).
///
/// It renders every job it has been given together: each iteration takes new
/// assignments, then steps all its renders of one model as one U-Net batch
/// (`RenderBatch`; an image never depends on its batch-mates). After each step
/// a job may checkpoint, write a preview, or finish. It reports through a
/// locked queue and `uv_async_send`, so the loop never waits on a render.
final class RenderWorker: @unchecked Sendable {
    private let inbox = NSCondition()
    private var pending: [RenderAssignment] = []
    private var shuttingDown = false
    private let outbox = Locked<[WorkerEvent]>([])
    /// nil once the loop has gone (SIGTERM while a step runs).
    private let wake: Locked<LoopAsync?>
    private let registry: Locked<PluginRegistry>
    private let models: ModelCache
    private let checkpoints: CheckpointStore
    private let limits: Locked<RenderLimits>
    private let threads: Int
    private let log = Logger(label: "diffusiond.worker")
    /// Signalled when the thread has ended (after `detach`, once its step in flight returns).
    private let threadEnded = DispatchSemaphore(value: 0)

    private struct Active {
        let assignment: RenderAssignment
        let render: CascadeRender
        let started: UInt64
    }

    init(wake: LoopAsync, registry: PluginRegistry, modelDirectories: [String], cacheBytes: Int, limits: RenderLimits,
         threads: Int, checkpoints: CheckpointStore)
    {
        self.checkpoints = checkpoints
        self.wake = Locked(wake)
        self.registry = Locked(registry)
        models = ModelCache(resolver: ModelResolver(directories: modelDirectories), capacityBytes: cacheBytes)
        self.limits = Locked(limits)
        self.threads = threads
    }

    func start() {
        let thread = Thread { [self] in
            serve()
            // After serve's renders and runtime are released: the process may exit at once.
            threadEnded.signal()
        }
        thread.name = "diffusiond-render"
        thread.start()
    }

    private func serve() {
        let runtime = KernelRuntime(threadCount: threads)
        var active: [Active] = []
        while let fresh = takeAssignments(waiting: active.isEmpty) {
            active += fresh.compactMap { begin($0, runtime) }
            active = active.filter(stillWanted)
            // one batch per model: a stage's images batch with every job's images of the same model
            for group in Dictionary(grouping: active, by: { $0.render.current.plan.job.model }).values {
                step(group, runtime)
            }
            active = active.filter { !$0.render.isFinished && !ended.contains($0.assignment.id) }
            ended.removeAll()
        }
    }

    func assign(_ assignment: RenderAssignment) {
        inbox.lock()
        pending.append(assignment)
        inbox.signal()
        inbox.unlock()
    }

    /// The loop is closing: later reports go nowhere, and the thread ends once
    /// its step in flight returns.
    func detach() {
        wake.withLock { $0 = nil }
        inbox.lock()
        shuttingDown = true
        inbox.signal()
        inbox.unlock()
    }

    /// Waits for the thread to end after `detach`; false if it is still inside a
    /// step after `seconds`.
    func waitForExit(seconds: Double) -> Bool { threadEnded.wait(timeout: .now() + seconds) == .success }

    /// Plugins rescanned and limits reread (SIGHUP): jobs started from now on use them.
    func reconfigure(registry fresh: PluginRegistry, limits newLimits: RenderLimits) {
        registry.withLock { $0 = fresh }
        limits.withLock { $0 = newLimits }
    }

    /// The events since the last call (the loop calls this on each wake-up).
    func takeEvents() -> [WorkerEvent] { outbox.withLock { events in defer { events = [] }; return events } }

    /// New assignments; waits for one when the worker has nothing to do. nil: shut down.
    private func takeAssignments(waiting: Bool) -> [RenderAssignment]? {
        inbox.lock()
        defer { inbox.unlock() }
        while waiting && pending.isEmpty && !shuttingDown { inbox.wait() }
        if shuttingDown { return nil }
        defer { pending.removeAll() }
        return pending
    }

    private func report(_ event: WorkerEvent) {
        outbox.withLock { $0.append(event) }
        wake.withLock { $0?.send() }
    }

    /// Jobs that ended during this iteration's steps (failed, or published).
    private var ended: Set<Int> = []

    private func begin(_ assignment: RenderAssignment, _ runtime: KernelRuntime) -> Active? {
        let id = assignment.id
        do {
            var initNoise: Tensor?
            if case .inline(let bytes)? = assignment.job.initNoise { initNoise = try Job.decodeInitNoise(bytes) }
            let plan = try CascadePlan(job: assignment.job, describe: models.describe, registry: registry.withLock { $0 },
                                       limits: limits.withLock { $0 }, initNoise: initNoise)
            let render = try CascadeRender(plan: plan, runtime: runtime, loadModel: models.model(named:))
            for warning in plan.stages.flatMap(\.warnings) { report(.note(id: id, warning)) }
            do {
                if let checkpoint = try checkpoints.read(id) {
                    if try render.resume(from: checkpoint, jobKey: assignment.jobKey) {
                        report(.resumed(id: id, step: render.completedSteps))
                    } else {
                        report(.note(id: id, "its checkpoint is from another program version or job; starting from step 0"))
                        checkpoints.remove(id)
                    }
                }
            } catch let error as DiffusionError {
                report(.note(id: id, "\(error); starting from step 0"))
                checkpoints.remove(id)
            }
            return Active(assignment: assignment, render: render, started: DispatchTime.now().uptimeNanoseconds)
        } catch {
            finish(assignment, .failed(id: id, error: "\(error)", retryable: DiffusionError.isTransient(error)))
            return nil
        }
    }

    /// Before a step: a job canceled, stopped or out of time leaves the batch.
    private func stillWanted(_ active: Active) -> Bool {
        let control = active.assignment.control
        let id = active.assignment.id
        if control.stop.load(ordering: .relaxed) {
            report(.abandoned(id: id))
            return false
        }
        if control.cancel.load(ordering: .relaxed) {
            finish(active.assignment, .canceled(id: id))
            return false
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - active.started) / 1e9
        if elapsed > active.assignment.timeLimit {
            let render = active.render
            finish(active.assignment, .failed(
                id: id, error: "the time limit of \(Self.seconds(active.assignment.timeLimit)) was reached at step \(render.completedSteps) of \(render.plan.totalSteps)",
                retryable: false))
            return false
        }
        return true
    }

    private func step(_ group: [Active], _ runtime: KernelRuntime) {
        let outcomes: [Error?]
        let start = DispatchTime.now().uptimeNanoseconds
        do {
            outcomes = try RenderBatch.step(group.map(\.render.current), on: runtime)
        } catch {
            for active in group { fail(active, error) }
            return
        }
        report(.stepped(model: group[0].render.current.plan.job.model, jobs: group.count,
                        images: group.reduce(0) { $0 + $1.render.job.count },
                        seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, cacheBytes: models.bytes))
        for (active, outcome) in zip(group, outcomes) {
            if let outcome { fail(active, outcome); continue }
            let (assignment, cascade) = (active.assignment, active.render)
            let render = cascade.current
            let step = render.completedSteps
            func progress(preview: String?) {
                report(.progress(id: assignment.id, step: render.completedSteps, total: render.totalSteps, stage: cascade.stage + 1,
                                 stages: cascade.plan.stages.count, done: cascade.completedSteps,
                                 overall: cascade.plan.totalSteps, preview: preview))
            }
            if cascade.isFinished {
                progress(preview: nil)
                publish(active)
                continue
            }
            guard render.endedStep else { continue }  // the middle of a step of several evaluations
            var preview: String?
            if assignment.previewEvery > 0, step % assignment.previewEvery == 0, let estimate = render.predictedOriginal {
                preview = writePreview(estimate, render, assignment)
            }
            progress(preview: preview)
            if render.isFinished {
                // The next stage begins on this one's images, and a checkpoint
                // keeps them: a job stopped now resumes in the next stage.
                do {
                    try cascade.advance()
                    try checkpoint(active)
                } catch {
                    fail(active, error)
                }
            } else if assignment.checkpointEvery > 0, step % assignment.checkpointEvery == 0 {
                do {
                    try checkpoint(active)
                } catch {
                    fail(active, error)
                }
            }
        }
    }

    /// A checkpoint refused for a lost lease ends the job here, writing nothing more.
    private func checkpoint(_ active: Active) throws {
        let assignment = active.assignment
        guard try checkpoints.write(active.render.checkpoint(jobKey: assignment.jobKey), lease: assignment.lease) else {
            return finish(assignment, .leaseLost(id: assignment.id))
        }
    }

    private func fail(_ active: Active, _ error: Error) {
        finish(active.assignment, .failed(id: active.assignment.id, error: "\(error)", retryable: DiffusionError.isTransient(error)))
    }

    private func publish(_ active: Active) {
        let (assignment, render) = (active.assignment, active.render)
        do {
            try OutputDirectory.write(render, outputs: assignment.outputs, lease: assignment.lease, owner: assignment.owner)
        } catch {
            return fail(active, error)
        }
        log.info("job \(assignment.id): \(render.job.count) image(s) in \(Self.seconds(render.current.stepSeconds)) of the last stage's steps")
        finish(assignment, .succeeded(lease: assignment.lease, images: render.job.count))
    }

    /// The job's last report: its preview goes (its checkpoint goes once the
    /// queue has recorded the end, under the job's lease).
    private func finish(_ assignment: RenderAssignment, _ event: WorkerEvent) {
        unlink(assignment.previewPath)
        ended.insert(assignment.id)
        report(event)
    }

    /// x̂₀ as images (a latent model's decoded) in one grid PNG, replaced
    /// atomically; nil if it could not be written.
    private func writePreview(_ estimate: Tensor, _ render: Render, _ assignment: RenderAssignment) -> String? {
        // The lease in the name: a stale host's preview never lands half-written in the one the job has now.
        let temporary = "\(assignment.previewPath).\(assignment.lease.token).tmp"
        do {
            try RenderOutput.writeGrid(try render.images(of: estimate), columns: assignment.job.gridColumns,
                                       range: render.model.description.sampleRange, to: temporary)
            try OutputDirectory.giveAway(file: temporary, to: assignment.owner)
            guard rename(temporary, assignment.previewPath) == 0 else { return nil }
            return assignment.previewPath
        } catch {
            log.warning("job \(assignment.id): no preview: \(error)")
            return nil
        }
    }

    static func seconds(_ value: Double) -> String { String(format: "%.1f s", value) }
}

/// Loaded models by name, kept while they fit in the configured memory (the
/// float32 bytes of every component's weights: U-Net, autoencoder, text
/// encoder); the least recently used goes first.
final class ModelCache: @unchecked Sendable {
    private let resolver: ModelResolver
    private let capacityBytes: Int
    private var entries: [String: (model: LoadedModel, bytes: Int, used: Int)] = [:]
    private var clock = 0
    private let log = Logger(label: "diffusiond.models")

    init(resolver: ModelResolver, capacityBytes: Int) {
        self.resolver = resolver
        self.capacityBytes = capacityBytes
    }

    /// A model's description from its configs, without loading it (planning).
    func describe(_ name: String) throws -> ModelDescription {
        try resolver.directory(name, relativeTo: nil).describe()
    }

    /// Weight bytes of the models held.
    var bytes: Int { entries.values.reduce(0) { $0 + $1.bytes } }

    func model(named name: String) throws -> LoadedModel {
        clock += 1
        if let entry = entries[name] {
            entries[name]!.used = clock
            return entry.model
        }
        let model = try resolver.load(name, relativeTo: nil)
        for note in model.description.notes { log.notice("\(note)") }
        entries[name] = (model, model.parameterBytes, clock)
        while self.bytes > capacityBytes, entries.count > 1,
              let oldest = entries.filter({ $0.key != name }).min(by: { $0.value.used < $1.value.used })?.key
        {
            entries[oldest] = nil
        }
        return model
    }
}

/// A value shared between the loop and the render thread, behind a pthread
/// mutex (NSLock). Not Synchronization's Mutex: its futex lock lives in the
/// prebuilt runtime, which ThreadSanitizer cannot see, so `make sanitize`
/// reported its critical sections as races.
final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()

    init(_ value: Value) { self.value = value }

    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
