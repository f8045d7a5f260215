import DiffusionModels
import DiffusionRender
import Foundation

/// The socket protocol's verbs (docs/protocol.md). Each request is one JSON
/// object with a `verb`; each reply is one object with `ok` and, when the request
/// had one, its `tag`. Errors a client can cause are one-line `error` strings.
extension Daemon {
    struct RequestError: Error {
        let message: String
        init(_ message: String) { self.message = message }
    }

    static let verbs = ["submit", "list", "show", "watch", "cancel", "hold", "release", "retry", "priority", "plugins",
                        "models", "stats", "metrics", "pause", "resume", "drain", "ping"]

    func handleRequest(_ line: Data, from session: ClientSession) {
        guard let object = try? JSONSerialization.jsonObject(with: line), let request = object as? [String: Any] else {
            return replyError(session, tag: nil, "a request is one JSON object on one line")
        }
        let tag = request["tag"]
        guard let verb = request["verb"] as? String else { return replyError(session, tag: tag, "a request needs a \"verb\"") }
        do {
            switch verb {
            case "ping":
                reply(session, tag: tag, ["pong": true, "version": RenderOutput.programVersion])
            case "submit":
                guard let job = request["job"] as? [String: Any] else { throw RequestError("submit needs a \"job\" object") }
                let data = try JSONSerialization.data(withJSONObject: job)
                if request["dry_run"] as? Bool == true {
                    let plan = try plan(try Job(json: data, source: "job"), label: "job")
                    return reply(session, tag: tag, ["plan": plan.resolvedJob])
                }
                var record = try admit(data, owner: Owner(uid: Int(session.uid)), source: "socket")
                if request["hold"] as? Bool == true {
                    // Held before the loop can dispatch it: nothing runs in between.
                    try store.transition(record.id, from: [.queued], to: .held, reason: "held at submit by \(record.ownerName)")
                    record = try store.record(record.id) ?? record
                }
                log.info("job \(record.id) submitted by \(record.ownerName)")
                reply(session, tag: tag, ["job": jobObject(record)])
                dispatch()
            case "list":
                reply(session, tag: tag, ["jobs": try list(request).map(jobObject)])
            case "show":
                let record = try find(request)
                let events = try store.events(of: record.id).map { event -> [String: Any] in
                    ["time": timestamp(event.time), "state": event.state, "reason": event.reason]
                }
                reply(session, tag: tag, ["job": jobObject(record), "events": events])
            case "watch":
                let record = try find(request)
                if record.state.isFinished {
                    reply(session, tag: tag, ["event": "end", "job": jobObject(record)])
                } else {
                    session.watching.insert(record.id)
                    watchers[record.id, default: []].append(session)
                    reply(session, tag: tag, ["event": "state", "job": jobObject(record)])
                }
            case _ where ["cancel", "hold", "release"].contains(verb) && request["all"] as? Bool == true:
                try bulk(verb, request, by: session, tag: tag)
            case "pause", "resume", "drain":
                try queueControl(verb, by: session, tag: tag)
            case "cancel":
                try cancel(try find(request), by: session, tag: tag)
            case "hold":
                try change(request, by: session, tag: tag, from: [.queued], to: .held, verb: "held")
            case "release":
                try change(request, by: session, tag: tag, from: [.held], to: .queued, verb: "released")
            case "retry":
                try change(request, by: session, tag: tag, from: [.failed, .canceled], to: .queued, verb: "retried")
            case "priority":
                let record = try find(request)
                try authorize(record, session)
                guard let number = request["priority"] as? NSNumber, let priority = Int(exactly: number.doubleValue),
                      (-1000...1000).contains(priority)
                else { throw RequestError("priority must be a whole number in -1000...1000") }
                try store.setPriority(record.id, priority, by: Owner(uid: Int(session.uid)).name)
                reply(session, tag: tag, ["job": jobObject(try store.record(record.id)!)])
            case "plugins":
                reply(session, tag: tag, pluginsObject())
            case "models":
                reply(session, tag: tag, ["models": modelsList()])
            case "stats":
                reply(session, tag: tag, try statsObject())
            case "metrics":
                reply(session, tag: tag, ["text": try metricsText(.openMetrics)])
            default:
                throw RequestError("unknown verb \"\(verb)\" (verbs: \(Self.verbs.joined(separator: ", ")))")
            }
        } catch let error as RequestError {
            replyError(session, tag: tag, error.message)
        } catch {
            replyError(session, tag: tag, "\(error)")
        }
    }

    func reply(_ session: ClientSession, tag: Any?, _ fields: [String: Any]) {
        var object = fields
        object["ok"] = true
        if let tag { object["tag"] = tag }
        session.send(object)
    }

    func replyError(_ session: ClientSession, tag: Any?, _ message: String) {
        var object: [String: Any] = ["ok": false, "error": message]
        if let tag { object["tag"] = tag }
        session.send(object)
    }

    /// Tells the job's watchers; an `end` event is the last they get for it.
    func publish(_ id: Int, event: String) {
        guard let list = watchers[id], !list.isEmpty, let record = try? store.record(id) else { return }
        let ended = record.state.isFinished
        guard let line = ClientSession.line(["ok": true, "event": ended ? "end" : event, "job": jobObject(record)]) else { return }
        for session in list where ended || event != "progress" || !session.isBehind {
            session.connection.write(line)
        }
        if ended {
            for session in list { session.watching.remove(id) }
            watchers[id] = nil
        }
    }

    // MARK: Verbs

    private func find(_ request: [String: Any]) throws -> JobRecord {
        let raw = request["id"]
        guard let id = (raw as? String).flatMap(Int.init) ?? (raw as? NSNumber)?.intValue else {
            throw RequestError("this verb needs a job \"id\"")
        }
        guard let record = try store.record(id) else { throw RequestError("no job \(id)") }
        return record
    }

    private func authorize(_ record: JobRecord, _ session: ClientSession) throws {
        guard Int(session.uid) == record.ownerUID || isAdmin(session) else {
            throw RequestError("job \(record.id) belongs to \(record.ownerName); only its owner, root or [access] admin_group may change it")
        }
    }

    private func change(_ request: [String: Any], by session: ClientSession, tag: Any?, from: [JobRecord.State],
                        to: JobRecord.State, verb: String) throws
    {
        let record = try find(request)
        try authorize(record, session)
        let who = Owner(uid: Int(session.uid)).name
        guard try store.transition(record.id, from: from, to: to, reason: "\(verb) by \(who)", resetAttempts: verb == "retried") else {
            throw RequestError("job \(record.id) is \(record.state.rawValue); only a job that is \(from.map(\.rawValue).joined(separator: " or ")) can be \(verb)")
        }
        reply(session, tag: tag, ["job": jobObject(try store.record(record.id)!)])
        publish(record.id, event: "state")
        dispatch()
    }

    /// A queued or held job is canceled at once; a running one at its next step,
    /// and the reply waits for that.
    private func cancel(_ record: JobRecord, by session: ClientSession, tag: Any?) throws {
        try authorize(record, session)
        let who = Owner(uid: Int(session.uid)).name
        if record.state == .running, let current = running[record.id] {
            current.assignment.control.cancel.store(true, ordering: .relaxed)
            running[record.id]!.cancelRequests.append((session, tag))
            log.info("job \(record.id): cancel requested by \(who)")
            return
        }
        // Running on another host of the shared queue: that host cancels it at its next lease renewal.
        if record.state == .running, try store.requestCancel(record.id, by: who) {
            log.info("job \(record.id): cancel requested by \(who) of \(record.leaseHost ?? "the host running it")")
            reply(session, tag: tag, ["job": jobObject(try store.record(record.id)!),
                                      "note": "cancel requested; \(record.leaseHost ?? "the host running it") stops the job within \(Int(config.leaseSeconds / 3) + 1) s"])
            return
        }
        guard try store.transition(record.id, from: [.queued, .held], to: .canceled, reason: "canceled by \(who)", error: "canceled") else {
            throw RequestError("job \(record.id) is \(record.state.rawValue); it cannot be canceled")
        }
        reply(session, tag: tag, ["job": jobObject(try store.record(record.id)!)])
        publish(record.id, event: "end")
    }

    func list(_ request: [String: Any]) throws -> [JobRecord] {
        var states: [JobRecord.State] = []
        if let raw = request["state"] {
            let names = (raw as? [String]) ?? (raw as? String).map { [$0] } ?? []
            states = try names.map { name in
                guard let state = JobRecord.State(rawValue: name) else {
                    throw RequestError("state must be one of \(JobRecord.State.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return state
            }
        }
        var owner: Int?
        if let raw = request["owner"] {
            guard let uid = (raw as? NSNumber)?.intValue ?? (raw as? String).flatMap(Owner.uid(named:)) else {
                throw RequestError("owner must be a user name or uid")
            }
            owner = uid
        }
        var limit: Int? = 100
        if request["all"] as? Bool == true { limit = nil }
        if let raw = request["limit"] as? NSNumber { limit = max(raw.intValue, 0) }
        return try store.list(states: states, ownerUID: owner, limit: limit)
    }

    // MARK: Representations

    /// A job as the protocol and `diffctl --json` show it.
    func jobObject(_ record: JobRecord) -> [String: Any] {
        var step = record.step
        var total = record.steps
        var eta: Any = NSNull()
        var preview: Any = NSNull()
        var (stage, stages) = (1, 1)
        if let current = running[record.id] {
            (step, total, stage, stages) = (current.step, current.total, current.stage, current.stages)
            preview = current.preview ?? NSNull()
            if current.done > current.firstDone {
                let elapsed = Double(DispatchTime.now().uptimeNanoseconds - current.startedAt) / 1e9
                eta = elapsed / Double(current.done - current.firstDone) * Double(current.overall - current.done)
            }
        } else if record.state == .running, access(config.previewPath(of: record.id), R_OK) == 0 {
            // Running on another host of a shared queue, whose previews are beside the shared outputs.
            preview = config.previewPath(of: record.id)
        }
        let outputDirectory = OutputDirectory.path(outputs: config.outputs, id: record.id)
        return [
            "id": String(record.id),
            "state": record.state.rawValue,
            "owner": ["uid": record.ownerUID, "user": record.ownerName],
            "priority": record.priority,
            "attempts": record.attempts,
            "max_attempts": record.maxAttempts,
            "model": record.model,
            "source": record.source,
            // The host that runs it (or ran it last), on a shared queue.
            "host": record.leaseHost ?? NSNull(),
            "progress": ["step": step, "total": total, "stage": stage, "stages": stages, "images_done": record.imagesDone,
                         "count": record.count,
                         "eta_seconds": eta, "preview": preview],
            "output_dir": outputDirectory,
            "outputs": record.state == .succeeded ? OutputDirectory.files(outputs: config.outputs, id: record.id) : [],
            "error": record.error ?? NSNull(),
            "created_at": timestamp(record.createdAt),
            "started_at": record.startedAt.map(timestamp) ?? NSNull(),
            "finished_at": record.finishedAt.map(timestamp) ?? NSNull(),
        ]
    }

    /// RFC 3339, UTC, with milliseconds.
    func timestamp(_ seconds: Double) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        let milliseconds = Int((seconds - Double(time)) * 1000)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                      parts.tm_hour, parts.tm_min, parts.tm_sec, milliseconds)
    }

    private func pluginsObject() -> [String: Any] {
        func components<T>(_ table: [String: PluginRegistry.Component<T>]) -> [[String: Any]] {
            table.values.sorted { $0.name < $1.name }.map { ["name": $0.name, "summary": $0.summary, "file": $0.file] }
        }
        return [
            "libraries": registry.libraries.map { ["name": $0.name, "version": $0.version, "file": $0.file] },
            "schedules": components(registry.schedules),
            "samplers": components(registry.samplers).map { sampler in
                let name = sampler["name"] as! String
                return sampler.merging(["diffusers_classes": registry.samplerClasses.filter { $0.value == name }.keys.sorted()]) { $1 }
            },
            "guidance": components(registry.guidances),
            "problems": registry.problems,
        ]
    }

    /// The models a job may name: each directory under the model directories
    /// that holds a model (the first directory wins a name).
    private func modelsList() -> [[String: Any]] {
        var seen: Set<String> = []
        var models: [[String: Any]] = []
        for directory in config.allModelDirectories {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            for name in names.sorted() where !name.hasPrefix(".") && !seen.contains(name) {
                guard let model = try? ModelDirectory(path: "\(directory)/\(name)") else { continue }
                seen.insert(name)
                let index = (try? model.modelIndex()) ?? [:]
                var entry: [String: Any] = [
                    "name": name, "path": model.path, "layout": model.layout.rawValue,
                    "classifier": FileManager.default.fileExists(atPath: "\(model.path)/classifier/config.json"),
                ]
                entry["pipeline"] = index["_class_name"] ?? NSNull()
                do {
                    let description = try model.describe()
                    entry["image_size"] = description.defaultImageSize
                    entry["in_channels"] = description.sampleShape[0]
                    entry["class_embeddings"] = description.classCount ?? NSNull()
                    entry["text_conditioned"] = description.text != nil
                    entry["latent_factor"] = description.latent?.factor ?? NSNull()
                    entry["super_resolution"] = description.superResolution.map { sr -> [String: Any] in
                        ["image_channels": sr.imageChannels, "upsample": sr.upsample?.rawValue ?? NSNull(),
                         "noise_level": sr.augmentation?.defaultLevel ?? NSNull()]
                    } ?? NSNull()
                } catch {
                    entry["problem"] = "\(error)"
                }
                entry["recommended_guidance_scale"] = index["recommended_guidance_scale"] ?? NSNull()
                models.append(entry)
            }
        }
        return models
    }

    /// The metrics exposition, with the queue's counts read now.
    func metricsText(_ format: Metrics.Format) throws -> String {
        let counts = try store.countsByState()
        return metrics.text(format, jobs: JobRecord.State.allCases.map { ($0.rawValue, counts[$0, default: 0]) },
                            version: RenderOutput.programVersion)
    }

    private func statsObject() throws -> [String: Any] {
        let counts = try store.countsByState()
        return [
            "jobs": Dictionary(uniqueKeysWithValues: JobRecord.State.allCases.map { ($0.rawValue, counts[$0, default: 0]) }),
            "running": running.keys.sorted().map(String.init),
            "images_rendered": metrics.imagesTotal,
            "uptime_seconds": Date().timeIntervalSince(startedAt),
            "clients": sessions.count,
            "watchers": watchers.values.reduce(0) { $0 + $1.count },
            "pid": Int(getpid()),
            "state_directory": config.stateDirectory,
            "queue": ["backend": config.queueBackend.rawValue, "host": config.hostName, "database": store.db.description],
            "leases_lost": metrics.leasesLostTotal,
            "leases_expired": metrics.leasesExpiredTotal,
            "fenced_writes": metrics.fencedWritesTotal,
            "loop_stall_max_ms": Int((metrics.loopStallMaxSeconds * 1000).rounded()),
        ]
    }
}
