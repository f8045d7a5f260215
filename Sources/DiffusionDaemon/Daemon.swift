import CUV
import DiffusionKernels
import DiffusionModels
import DiffusionRender
import Foundation
import Logging

/// The daemon: one libuv loop owning the spool watcher, the socket, timers and
/// signals; the queue (SQLite, or PostgreSQL shared with other hosts); one
/// render worker thread. Everything here runs on the loop's thread; the worker
/// talks back only through `WorkerEvent`s.
public final class Daemon {
    private(set) var config: DaemonConfig
    private let configPath: String?
    let loop: EventLoop
    let store: JobStore
    /// The shared queue's connection (the postgresql backend), whose socket the loop watches for NOTIFY.
    private let postgres: PostgresDatabase?
    private var notifications: LoopPoll?
    /// Where the worker keeps checkpoints.
    private let checkpoints: CheckpointStore
    let spool: Spool
    var registry: PluginRegistry
    let log = Logger(label: "diffusiond")
    let notifier = SystemdNotifier()
    private let lock: StateLock
    private var worker: RenderWorker!
    private var boundSocketPath: String?

    /// A job the worker has, with its live progress.
    struct Running {
        let assignment: RenderAssignment
        var lease: Lease { assignment.lease }
        let startedAt: UInt64
        /// The step and total within the current stage (1-based, of `stages`).
        var step = 0
        var total: Int
        var stage = 1
        var stages = 1
        /// Steps done over every stage, where this run started (a checkpoint's),
        /// and how many there are: the ETA spans every stage.
        var done = 0
        var firstDone = 0
        var overall: Int
        var preview: String?
        /// Clients waiting for a cancel to take effect.
        var cancelRequests: [(ClientSession, Any?)] = []
    }
    /// The jobs rendering together, by id: all of one model.
    var running: [Int: Running] = [:]
    var sessions: [ObjectIdentifier: ClientSession] = [:]
    var watchers: [Int: [ClientSession]] = [:]
    /// When clients were last turned away for want of descriptors (loop ms).
    var lastTurnedAway: UInt64 = 0
    /// Clients waiting for `drain` to find nothing running.
    var drainWaiters: [(ClientSession, Any?)] = []
    private var stopping = false
    let startedAt = Date()
    var metrics = Metrics()
    private var scanTimer: LoopTimer!
    private var scanPending = false
    private var backoffTimer: LoopTimer!
    /// Ends the worker reported that the queue could not record yet (the
    /// database was unreachable): recorded when it answers, if the lease still holds.
    private var unsettled: [WorkerEvent] = []
    /// When the shared queue's connection was lost (loop ms), until it stands again:
    /// meanwhile each call that fails for it is not logged again.
    private var queueLostAt: UInt64?
    /// Jobs watched here that run on another host: the state and step last shown.
    private var remoteSeen: [Int: (JobRecord.State, Int)] = [:]

    /// Opens the state directory, the queue and the socket; `run()` then serves.
    public init(config: DaemonConfig, path: String?) throws {
        self.config = config
        configPath = path
        for directory in [config.stateDirectory, config.outputs, config.checkpoints, config.previews] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        chmod(config.outputs, 0o755)
        lock = try StateLock(path: "\(config.stateDirectory)/diffusiond.lock")
        switch config.queueBackend {
        case .sqlite:
            postgres = nil
            store = try JobStore(path: config.database, hostName: config.hostName, leaseSeconds: config.leaseSeconds)
            checkpoints = CheckpointFiles(directory: config.checkpoints)
        case .postgresql:
            let url = config.queueURL ?? ""
            let database = try PostgresDatabase(url: url, hostName: config.hostName)
            postgres = database
            store = try JobStore(database: database, hostName: config.hostName, leaseSeconds: config.leaseSeconds)
            // The render thread's own connection.
            checkpoints = CheckpointTable(store: try JobStore(database: try PostgresDatabase(url: url, hostName: config.hostName),
                                                              hostName: config.hostName, leaseSeconds: config.leaseSeconds))
        }
        spool = try Spool(root: config.spool, maxBytes: config.maxRequestBytes)
        registry = PluginRegistry(directories: config.allPluginDirectories)
        loop = try EventLoop()
    }

    /// Serves until SIGTERM or SIGINT; returns the process's exit status.
    public func run() throws -> Int32 {
        // A parent may have started us with signals blocked (test runners do);
        // the loop's signal handles need them delivered.
        var none = sigset_t()
        sigemptyset(&none)
        sigprocmask(SIG_SETMASK, &none, nil)
        signal(SIGPIPE, SIG_IGN)
        for problem in registry.problems { log.warning("\(problem)") }
        log.info("plugins: \(registry.libraries.map(\.name).joined(separator: ", "))")
        requeueAbandoned(startup: true)

        let wake = LoopAsync(loop) { [unowned self] in drainWorker() }
        worker = RenderWorker(wake: wake, registry: registry, modelDirectories: config.allModelDirectories,
                              cacheBytes: config.modelCacheMB << 20, limits: config.limits, threads: config.threads,
                              checkpoints: checkpoints)
        worker.start()

        let endpoint: PipeServer.Endpoint
        if let fd = SystemdNotifier.listenSocket() {
            endpoint = .inherited(fd)
            log.info("listening on the socket systemd passed (fd \(fd))")
        } else {
            endpoint = .path(config.socketPath, mode: 0o660)
            boundSocketPath = config.socketPath
            log.info("listening on \(config.socketPath)")
        }
        let server = try PipeServer(loop, endpoint: endpoint) { [unowned self] connection in accept(connection) }
        server.onAcceptFailure = { [unowned self] error in logTurnedAway(error) }

        for signal in [SIGTERM, SIGINT] { _ = try LoopSignal(loop, signal: signal) { [unowned self] in stop() } }
        _ = try LoopSignal(loop, signal: SIGHUP) { [unowned self] in reload() }

        scanTimer = LoopTimer(loop) { [unowned self] in scanSpool() }
        _ = try LoopDirectoryWatch(loop, path: spool.new) { [unowned self] in scanSoon() }
        LoopTimer(loop) { [unowned self] in scanSoon() }.start(after: 2000, repeatEvery: 2000)
        backoffTimer = LoopTimer(loop) { [unowned self] in dispatch() }
        let leaseTick = UInt64(config.leaseSeconds * 1000 / 3)
        LoopTimer(loop) { [unowned self] in renewLeases() }.start(after: leaseTick, repeatEvery: leaseTick)
        if let postgres {
            // Another host's claims, ends and expiries reach this one by NOTIFY;
            // expired leases and remote watchers need a look now and then.
            postgres.onDisconnect = { [unowned self] reason in
                notifications?.close()
                notifications = nil
                log.warning("the queue database is unreachable: \(reason); renders go on, nothing is claimed until it answers")
                queueLostAt = loop.now
            }
            // A NOTIFY read inside a statement, and a connection made again, call for a look at the queue, after the call.
            let lookAgain = LoopTimer(loop) { [unowned self] in dispatch() }
            postgres.onNotified = { lookAgain.start(after: 0) }
            postgres.onConnect = { [unowned self] fd in
                watchNotifications(fd)
                if let lost = queueLostAt {
                    log.notice("the queue database answers again, after \((loop.now - lost + 500) / 1000) s")
                    queueLostAt = nil
                }
                lookAgain.start(after: 0)
            }
            if let fd = postgres.socket { watchNotifications(fd) }
            postgres.reconnect(on: loop)
            LoopTimer(loop) { [unowned self] in requeueAbandoned(startup: false) }.start(after: leaseTick, repeatEvery: leaseTick)
            LoopTimer(loop) { [unowned self] in publishRemoteProgress() }.start(after: 1000, repeatEvery: 1000)
        }
        if let textfile = config.metricsTextfile {
            let every = UInt64(config.metricsIntervalSeconds * 1000)
            LoopTimer(loop) { [unowned self] in writeMetrics(to: textfile) }.start(after: 0, repeatEvery: max(every, 100))
        }
        if config.idleSeconds > 0 {
            let every = UInt64(max(min(config.idleSeconds * 250, 10_000), 100))
            LoopTimer(loop) { [unowned self] in closeIdleSessions() }.start(after: every, repeatEvery: every)
        }
        // History is pruned once a minute, not at every job's end: each prune is a write.
        LoopTimer(loop) { [unowned self] in prune() }.start(after: 60_000, repeatEvery: 60_000)
        // The loop's longest stall: how late a 100 ms tick came.
        var lastTick = DispatchTime.now().uptimeNanoseconds
        LoopTimer(loop) { [unowned self] in
            let now = DispatchTime.now().uptimeNanoseconds
            metrics.loopStallMaxSeconds = max(metrics.loopStallMaxSeconds, Double(now - lastTick) / 1e9 - 0.1)
            lastTick = now
        }.start(after: 100, repeatEvery: 100)
        if let interval = notifier.watchdogMilliseconds {
            LoopTimer(loop) { [unowned self] in notifier.watchdog() }.start(after: interval, repeatEvery: interval)
        }

        try store.dropReceipts(keeping: Set(spool.candidates()))
        scanSpool()
        prune()
        dispatch()
        notifier.ready(status: statusLine)
        log.notice("diffusiond \(RenderOutput.programVersion) ready: state \(config.stateDirectory)")

        loop.run()

        let clean = loop.close()
        if let boundSocketPath { unlink(boundSocketPath) }
        log.notice("stopped; every loop handle closed: \(clean ? "yes" : "no")")
        let status: Int32 = clean ? 0 : 1
        // The exit handlers tear down OpenBLAS and the runtime under a thread
        // still inside a step: wait for the step, and skip them if it lasts.
        // Every write of the queue is committed already.
        if !worker.waitForExit(seconds: 4) {
            log.notice("the step in flight is abandoned")
            _exit(status)
        }
        return status
    }

    // MARK: Scheduling

    /// Claims runnable jobs for the worker: the next one in queue order when it
    /// is idle, and more while they share the running jobs' model and fit in
    /// `[render] batch_images` (one that does not waits, keeping the order).
    func dispatch() {
        guard !stopping, !isPaused else { return }
        do {
            while runningImages < config.batchImages || running.isEmpty {
                let now = JobStore.now()
                var parsed: Result<Job, Error>?
                let claimed = try store.claimNext(now: now) { record in
                    let job = Result { try Job(json: record.job, source: "job \(record.id)") }
                    parsed = job
                    guard case .success(let job) = job, let batchmate = running.values.first else { return true }
                    return batchmate.assignment.job.model == job.model && runningImages + job.count <= config.batchImages
                }
                guard let record = claimed, let lease = record.leaseToken.map({ Lease(id: record.id, token: $0) }) else {
                    if parsed == nil, let next = try store.earliestBackoff(after: now) {
                        backoffTimer.start(after: UInt64(max((next - now) * 1000, 1)))
                    }
                    break
                }
                switch parsed {
                case .success(let job)?:
                    start(record, job, lease)
                case .failure(let error)?:
                    try store.transition(record.id, from: [.running], to: .failed, reason: "\(error)", error: "\(error)", lease: lease)
                case nil:
                    break
                }
            }
            if notifier.isActive { notifier.status(statusLine) }
        } catch {
            logQueueFailure("the queue cannot be read", error)
            // Tried again shortly: a database that went away comes back.
            backoffTimer.start(after: 1000)
        }
    }

    /// Images of the jobs rendering together now.
    private var runningImages: Int { running.values.reduce(0) { $0 + $1.assignment.job.count } }

    private func start(_ record: JobRecord, _ job: Job, _ lease: Lease) {
        let attempt = "attempt \(record.attempts + 1) of \(record.maxAttempts)"
        let limit = config.jobSeconds > 0 ? config.jobSeconds : .infinity
        let assignment = RenderAssignment(
            id: record.id, job: job, jobKey: Spool.hash(record.job), lease: lease, outputs: config.outputs,
            previewPath: config.previewPath(of: record.id),
            checkpointEvery: config.checkpointEverySteps,
            previewEvery: job.previewEvery > 0 ? job.previewEvery : config.previewEverySteps,
            owner: uid_t(record.ownerUID), timeLimit: job.timeLimit > 0 ? min(job.timeLimit, limit) : limit,
            control: RenderControl())
        metrics.queueWaitSeconds.observe(max(JobStore.now() - record.createdAt, 0))
        running[record.id] = Running(assignment: assignment, startedAt: DispatchTime.now().uptimeNanoseconds, total: record.steps,
                                     overall: record.steps)
        worker.assign(assignment)
        log.info("job \(record.id) started (\(attempt), lease \(lease.token)) for \(record.ownerName)")
        publish(record.id, event: "state")
    }

    // MARK: Leases

    /// Every third of `[queue] lease_seconds`: this host's leases are renewed
    /// (with each job's progress), after the ends the database could not record
    /// are tried again; a job whose lease another host has taken is dropped at
    /// once, writing nothing more; a cancel asked on another host takes effect.
    private func renewLeases() {
        do {
            // Ends first: each names its lease, so one the job no longer holds is refused.
            let pending = unsettled
            unsettled = []
            for event in pending { record(event) }
            let renewal = try store.renew(running.values.map { ($0.lease, $0.done) })
            for id in renewal.lost {
                guard let current = running.removeValue(forKey: id) else { continue }
                current.assignment.control.stop.store(true, ordering: .relaxed)
                metrics.leasesLostTotal += 1
                log.warning("job \(id): lease \(current.lease.token) lost (not renewed in time, so another host may run it); dropped")
                publish(id, event: "state")
            }
            for id in renewal.cancelRequested { running[id]?.assignment.control.cancel.store(true, ordering: .relaxed) }
            if !renewal.lost.isEmpty || !pending.isEmpty { dispatch() }
        } catch {
            logQueueFailure("leases not renewed", error)
        }
    }

    /// Running jobs that no live host holds go back to the queue; at start-up
    /// those this host held too. Then partial outputs left behind are settled,
    /// and at start-up checkpoints of ended jobs go.
    private func requeueAbandoned(startup: Bool) {
        do {
            let abandoned = try store.requeueAbandoned(poisonAfter: config.poisonAfterCrashes, startup: startup)
            for id in abandoned.queued { log.notice("job \(id) was running on a host that stopped or lost its lease; queued again") }
            for id in abandoned.poisoned {
                log.error("job \(id) was running at \(config.poisonAfterCrashes) unclean ends in a row; failed as a poison job")
            }
            metrics.leasesExpiredTotal += startup ? 0 : abandoned.queued.count + abandoned.poisoned.count
            // Partial outputs are left only by a host that stopped: this one,
            // or one whose jobs were just requeued. The shared directory is
            // listed then, not at every tick.
            if startup || !abandoned.queued.isEmpty || !abandoned.poisoned.isEmpty {
                try OutputDirectory.sweep(outputs: config.outputs, record: store.record)
            }
            if startup { try checkpoints.sweep(record: store.record) }
            if !startup && !abandoned.queued.isEmpty { dispatch() }
        } catch {
            logQueueFailure("abandoned jobs not requeued", error)
        }
    }

    /// A queue call that failed: a transient failure is a warning, said once
    /// per outage of the shared queue's database (its loss is logged when it
    /// happens); any other is an error, said every time.
    private func logQueueFailure(_ what: String, _ error: Error) {
        guard (error as? DiffusionError)?.transient == true else { return log.error("\(what): \(error)") }
        if queueLostAt == nil { log.warning("\(what): \(error)") }
    }

    private func watchNotifications(_ fd: Int32) {
        notifications?.close()
        notifications = try? LoopPoll(loop, fd: fd) { [unowned self] in
            if postgres?.takeNotifications() == true { dispatch() }
        }
    }

    /// Watchers here of jobs running elsewhere see their progress (from the
    /// renewals, at most once a lease tick) and their end.
    private func publishRemoteProgress() {
        for id in watchers.keys where running[id] == nil {
            guard let record = try? store.record(id) else { continue }
            let seen = (record.state, record.step)
            guard remoteSeen[id].map({ $0 != seen }) ?? true else { continue }
            remoteSeen[id] = seen
            publish(id, event: record.state == .running ? "progress" : "state")
        }
        remoteSeen = remoteSeen.filter { watchers[$0.key] != nil }
    }

    private func drainWorker() {
        var ended = false
        for event in worker.takeEvents() {
            record(event)
            if event.isEnd { ended = true }
        }
        // Progress alone frees no room in the batch: the queue is read only when a job ended.
        if ended { dispatch() }
    }

    /// One worker event into the queue. A job's end the database cannot take
    /// now waits in `unsettled` (its outputs in their partial directory) and
    /// is tried again at each renewal until it is recorded or refused.
    private func record(_ event: WorkerEvent) {
        do {
            try handle(event)
        } catch let error as DiffusionError where error.transient && event.isEnd {
            logQueueFailure("the queue cannot record a job's end yet", error)
            unsettled.append(event)
        } catch {
            log.error("the queue cannot be written: \(error)")
        }
    }

    private func handle(_ event: WorkerEvent) throws {
        switch event {
        case .resumed(let id, let step):
            guard running[id] != nil else { return }
            running[id]!.done = step
            running[id]!.firstDone = step
            try store.appendNote(id, "resumed from the checkpoint at step \(step)")
            log.info("job \(id) resumed from its checkpoint at step \(step)")
        case .stepped(let model, let jobs, let images, let seconds, let cacheBytes):
            metrics.recordStep(model: model, jobs: jobs, images: images, seconds: seconds, cacheBytes: cacheBytes)
        case .note(let id, let message):
            try store.appendNote(id, message)
            log.notice("job \(id): \(message)")
        case .progress(let id, let step, let total, let stage, let stages, let done, let overall, let preview):
            guard running[id] != nil else { return }
            running[id]!.step = step
            running[id]!.total = total
            (running[id]!.stage, running[id]!.stages) = (stage, stages)
            (running[id]!.done, running[id]!.overall) = (done, overall)
            if let preview { running[id]!.preview = preview }
            publish(id, event: "progress")
        case .succeeded(let lease, let images):
            let id = lease.id
            // Dropped meanwhile (its lease found lost): its outputs are not the job's.
            guard running[id] != nil else { return OutputDirectory.discard(outputs: config.outputs, lease: lease) }
            if try store.transition(id, from: [.running], to: .succeeded, reason: "rendered \(images) image(s) on \(config.hostName)",
                                    lease: lease)
            {
                try OutputDirectory.settle(outputs: config.outputs, lease: lease)
                metrics.imagesTotal += images
            } else {
                fenced(lease, "its success")
                OutputDirectory.discard(outputs: config.outputs, lease: lease)
            }
            finishRunning(id)
        case .failed(let id, let error, let retryable):
            guard let lease = running[id]?.lease else { return }
            if let state = try store.fail(lease, error: error, retryable: retryable, backoffSeconds: config.retryBackoffSeconds) {
                log.warning("job \(id) \(state == .queued ? "failed, will retry" : "failed"): \(error)")
            } else {
                fenced(lease, "its failure")
            }
            finishRunning(id)
        case .canceled(let id):
            guard let lease = running[id]?.lease else { return }
            if !(try store.transition(id, from: [.running], to: .canceled, reason: "canceled while running", error: "canceled",
                                      lease: lease))
            {
                fenced(lease, "its cancel")
            }
            finishRunning(id)
        case .abandoned(let id):
            finishRunning(id)
        case .leaseLost(let id):
            if let lease = running[id]?.lease { fenced(lease, "a checkpoint") }
            finishRunning(id)
        }
    }

    /// A write refused because another claim holds the job now: nothing of this host's render counts.
    private func fenced(_ lease: Lease, _ what: String) {
        metrics.fencedWritesTotal += 1
        log.warning("job \(lease.id): \(what) was refused: lease \(lease.token) is no longer the job's (another host took it)")
    }

    /// The worker is done with `id`: answer waiting cancels, tell watchers.
    private func finishRunning(_ id: Int) {
        guard let done = running.removeValue(forKey: id) else { return }
        checkpoints.renderEnded(id)
        let record = try? store.record(id)
        for (session, tag) in done.cancelRequests {
            if record?.state == .canceled {
                reply(session, tag: tag, ["job": record.map(jobObject) ?? NSNull()])
            } else {
                replyError(session, tag: tag, "job \(id) ended \(record?.state.rawValue ?? "") before the cancel took effect")
            }
        }
        publish(id, event: record?.state.isFinished == true ? "end" : "state")
        answerDrains()
    }

    // MARK: Spool

    private func scanSoon() {
        guard !scanPending, !stopping else { return }
        scanPending = true
        scanTimer.start(after: 0)
    }

    private func scanSpool() {
        scanPending = false
        var queued = false
        spool.scan(admit: { entry in
            do {
                if try store.receipt(name: entry.name, hash: entry.hash) != nil { return .queued }
                let record = try admit(entry.data, owner: Owner(uid: Int(entry.owner)), source: "spool \(entry.name)",
                                       receipt: (entry.name, entry.hash))
                log.info("job \(record.id) from spool file \(entry.name) (uid \(entry.owner))")
                queued = true
                return .queued
            } catch let error as DiffusionError where error.transient {
                log.error("spool file \(entry.name) left for later: \(error)")
                return .later(error.message)
            } catch {
                return .rejected("\(error)")
            }
        }, picked: { entry in
            try? store.dropReceipt(name: entry.name, hash: entry.hash)
        }, refused: { name, reason in
            log.warning("spool file \(name) rejected: \(reason)")
            try? store.logEvent("rejected", "spool file \(name): \(reason)")
            metrics.spoolRejectedTotal += 1
        })
        if queued { dispatch() }
    }

    /// Checks a job as the daemon accepts it (docs/jobs.md, plus the daemon's
    /// rules: a model by name only, init_noise inline, the configured limits),
    /// plans its render against the model's configs and the plugins, and queues
    /// it; a job that could not render is refused here with the plan's reason.
    func admit(_ data: Data, owner: Owner, source: String, receipt: (name: String, hash: String)? = nil) throws -> JobRecord {
        let label = source.hasPrefix("spool ") ? String(source.dropFirst(6)) : "job"
        let job = try Job(json: data, source: label)
        _ = try plan(job, label: label)
        try checkUserLimits(job, owner: owner, label: label)
        // A job without a seed gets one now, so that a retry or a resumed run
        // renders the same images.
        var stored = data
        if job.seeds == nil, var object = try JSONSerialization.jsonObject(with: data) as? [String: Any] {
            object["seed"] = Int.random(in: 0...Int(Int64.max))
            stored = try JSONSerialization.data(withJSONObject: object)
        }
        return try store.insert(job: stored, model: job.model, steps: job.steps, count: job.count, priority: job.priority, owner: owner,
                                source: source, maxAttempts: config.maxAttempts, receipt: receipt)
    }

    /// The render plan of `job` as this daemon would run it (admission and `submit --dry-run`);
    /// errors are one line starting with `label`.
    func plan(_ job: Job, label: String) throws -> CascadePlan {
        for model in [job.model] + job.stages.map(\.model) {
            guard !model.contains("/"), !model.hasPrefix("."), !model.contains("\0") else {
                throw DiffusionError("\(label): model must be the name of an installed model (see `diffctl models`), not a path")
            }
        }
        if case .path? = job.initNoise {
            throw DiffusionError("\(label): init_noise must be inline ({\"npy_base64\": ...}); the daemon opens no file a job names")
        }
        if case .path? = job.initImage {
            throw DiffusionError("\(label): init_image must be inline ({\"png_base64\": ...}); the daemon opens no file a job names")
        }
        if case .path? = job.image {
            throw DiffusionError("\(label): image must be inline ({\"png_base64\": ...}); the daemon opens no file a job names")
        }
        if config.jobSeconds > 0 && job.timeLimit > config.jobSeconds {
            throw DiffusionError("\(label): time_limit \(job.timeLimit) is over the limit of \(config.jobSeconds) s")
        }
        do {
            let resolver = ModelResolver(directories: config.allModelDirectories)
            var initNoise: Tensor?
            if case .inline(let bytes)? = job.initNoise { initNoise = try Job.decodeInitNoise(bytes) }
            return try CascadePlan(job: job, describe: { name in
                guard config.allModelDirectories.contains(where: { FileManager.default.fileExists(atPath: "\($0)/\(name)") }) else {
                    throw DiffusionError("no model named \"\(name)\" (see `diffctl models`)")
                }
                return try resolver.directory(name, relativeTo: nil).describe()
            }, registry: registry, limits: config.limits, initNoise: initNoise)
        } catch let error as DiffusionError {
            throw DiffusionError("\(label): \(error.message)")
        }
    }

    // MARK: Clients

    /// A client connects. Its share is bounded: `[limits] connections_per_user`
    /// connections per uid, replies it does not read pause its reading
    /// (`PipeConnection`), unfinished lines of all clients together stay under
    /// `[limits] socket_buffer_bytes`, and a connection idle for `[limits]
    /// idle_seconds` (watching nothing) is closed. Each limit that bites is logged.
    private func accept(_ connection: PipeConnection) {
        guard let session = ClientSession(connection: connection, maxFrameBytes: config.maxRequestBytes) else {
            log.warning("a client was disconnected: its credentials (SO_PEERCRED) cannot be read")
            connection.close()
            return
        }
        // Descriptors are kept for the daemon's own files (the queue, checkpoints,
        // outputs): past that, clients are refused with a line and a log entry,
        // never left to fail the daemon's writes.
        if sessions.count >= clientDescriptorBudget {
            logTurnedAway(DiffusionError("\(sessions.count) clients hold the descriptors left for clients (the limit is \(Self.descriptorLimit))"))
            replyError(session, tag: nil, "the daemon has as many connections as it can hold; try again later")
            connection.closeAfterWrites()
            return
        }
        let open = sessions.values.filter { $0.uid == session.uid }.count
        if open >= config.connectionsPerUser {
            log.warning("uid \(session.uid) (pid \(session.pid)) refused: \(open) connections open, the limit of [limits] connections_per_user")
            replyError(session, tag: nil, "too many connections from this user (limit \(config.connectionsPerUser)); close some and try again")
            connection.closeAfterWrites()
            return
        }
        let key = ObjectIdentifier(session)
        sessions[key] = session
        session.lastActivity = loop.now
        connection.maxPendingWriteBytes = ClientSession.slowClientBytes
        connection.onRead = { [unowned self, unowned session] bytes in
            session.lastActivity = loop.now
            session.feed(bytes, handle: { line in handleRequest(line, from: session) }, oversize: {
                replyError(session, tag: nil, "a request is over the limit of \(config.maxRequestBytes) bytes")
            })
            // The client whose unfinished line takes the total over the budget is the one cut off.
            let buffered = sessions.values.reduce(0) { $0 + $1.bufferedBytes }
            if session.bufferedBytes > 0 && buffered > config.socketBufferBytes {
                session.dropBuffer()
                log.warning("uid \(session.uid) (pid \(session.pid)) disconnected: unfinished requests of all clients hold \(buffered) bytes, over [limits] socket_buffer_bytes")
                replyError(session, tag: nil, "the daemon's request buffers are full; send the request again later")
                connection.closeAfterWrites()
            }
        }
        connection.onClose = { [unowned self, unowned connection, unowned session] in
            if connection.failure != 0 {
                log.info("uid \(session.uid) (pid \(session.pid)) disconnected: \(String(cString: uv_strerror(connection.failure)))")
            }
            if let session = sessions.removeValue(forKey: key) {
                for id in session.watching { watchers[id]?.removeAll { $0 === session } }
            }
        }
        connection.startReading()
    }

    /// `[metrics] textfile`, replaced whole (written beside it, then renamed), as
    /// node_exporter's textfile collector needs; a failure is logged, never fatal.
    private func writeMetrics(to path: String) {
        do {
            let temporary = "\(path).\(getpid()).tmp"
            try Data(try metricsText(.prometheus).utf8).write(to: URL(fileURLWithPath: temporary))
            chmod(temporary, 0o644)
            guard rename(temporary, path) == 0 else { throw DiffusionError.system("cannot rename \(temporary) to \(path)") }
        } catch {
            log.warning("metrics: \(error)")
        }
    }

    /// RLIMIT_NOFILE as the daemon started.
    static let descriptorLimit: Int = {
        var limit = rlimit()
        return getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur < 1 << 20 ? Int(limit.rlim_cur) : 1 << 20
    }()

    /// Connections the daemon takes: its descriptor limit less 64 for its own files.
    var clientDescriptorBudget: Int { max(Self.descriptorLimit - 64, 8) }

    /// Clients turned away for want of descriptors: said once a minute at most.
    func logTurnedAway(_ error: DiffusionError) {
        guard lastTurnedAway == 0 || loop.now - lastTurnedAway > 60_000 else { return }
        lastTurnedAway = loop.now
        log.error("\(error); clients are being turned away: raise LimitNOFILE or lower [limits] connections_per_user")
    }

    /// Closes connections that sent nothing for `[limits] idle_seconds` and watch no job.
    private func closeIdleSessions() {
        let cutoff = loop.now - UInt64(config.idleSeconds * 1000)
        for session in sessions.values where session.watching.isEmpty && session.lastActivity < cutoff {
            log.info("uid \(session.uid) (pid \(session.pid)) disconnected after \(Int(config.idleSeconds)) s idle")
            session.connection.close()
        }
    }

    // MARK: Lifecycle

    /// SIGTERM/SIGINT: the running job goes back to the queue (its last
    /// checkpoint kept), every handle closes and `run()` returns.
    private func stop() {
        guard !stopping else { return }
        stopping = true
        notifier.stopping()
        log.notice("stopping")
        for (id, current) in running {
            current.assignment.control.stop.store(true, ordering: .relaxed)
            _ = try? store.transition(id, from: [.running], to: .queued, reason: "the daemon stopped; queued again", lease: current.lease)
        }
        running = [:]
        // The worker may still be inside a step; it will find no loop to report to.
        worker.detach()
        let closed = loop.closeAllHandles()
        log.info("closing \(closed) loop handles")
    }

    /// SIGHUP: reread the configuration and rescan plugins. Jobs started from
    /// now on see the new settings; paths, threads and the log level need a restart.
    private func reload() {
        notifier.reloading()
        var problem: String?
        if let configPath {
            do {
                let fresh = try DaemonConfig(path: configPath)
                if fresh.stateDirectory != config.stateDirectory || fresh.spool != config.spool || fresh.socketPath != config.socketPath
                    || fresh.database != config.database || fresh.outputs != config.outputs || fresh.threads != config.threads
                    || fresh.allModelDirectories != config.allModelDirectories || fresh.logLevel != config.logLevel
                {
                    log.warning("\(configPath): changes to [paths], [render] threads and [log] level take effect at the next start")
                }
                var kept = fresh
                (kept.stateDirectory, kept.spoolDirectory, kept.socketPath) = (config.stateDirectory, config.spoolDirectory, config.socketPath)
                (kept.databasePath, kept.outputsDirectory, kept.threads) = (config.databasePath, config.outputsDirectory, config.threads)
                kept.modelDirectories = config.modelDirectories
                kept.logLevel = config.logLevel
                config = kept
            } catch {
                problem = "\(error)"
                log.error("reload: \(error); keeping the running configuration")
            }
        }
        let plugins = PluginRegistry(directories: config.allPluginDirectories)
        for problem in plugins.problems { log.warning("\(problem)") }
        registry = plugins
        worker.reconfigure(registry: plugins, limits: config.limits)
        log.notice("reloaded: plugins \(plugins.libraries.map(\.name).joined(separator: ", "))")
        notifier.send("READY=1\nSTATUS=\(problem.map { "reload failed, running the old configuration: \($0)" } ?? statusLine)")
        dispatch()
    }

    private func prune() {
        for path in spool.clean(abandonedAfter: config.spoolTmpMaxAgeHours * 3600, rejectedAfter: config.keepDays * 86400) {
            log.info("spool hygiene: removed \(path)")
        }
        do {
            let pruned = try store.prune(keepJobs: config.keepJobs, keepDays: config.keepDays)
            for id in pruned { OutputDirectory.remove(outputs: config.outputs, id: id) }
            if !pruned.isEmpty { log.info("pruned \(pruned.count) finished job(s) from the history") }
        } catch {
            log.error("pruning failed: \(error)")
        }
    }

    var statusLine: String {
        let counts = (try? store.countsByState()) ?? [:]
        let doing = running.isEmpty ? (isPaused ? "paused" : "idle") : (isPaused ? "paused, finishing " : "rendering ") + running.keys.sorted().map { "job \($0) (\(running[$0]!.step)/\(running[$0]!.total))" }.joined(separator: ", ")
        return "\(doing); \(counts[.queued, default: 0]) queued"
    }
}

/// One daemon per state directory: an exclusive flock on `diffusiond.lock`,
/// held for the process's life, with the holder's pid in the file.
final class StateLock {
    private let fd: Int32

    init(path: String) throws {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DiffusionError("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 32)
            let count = pread(fd, &buffer, buffer.count, 0)
            let holder = String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            // Not closed here: the object is whole, so deinit closes it.
            throw DiffusionError("another diffusiond (pid \(holder.isEmpty ? "unknown" : holder)) is running on \(URL(fileURLWithPath: path).deletingLastPathComponent().path)")
        }
        ftruncate(fd, 0)
        let pid = "\(getpid())\n"
        _ = pid.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    deinit { if fd >= 0 { close(fd) } }
}
