import DiffusionKernels
import DiffusionRender
import Foundation

/// Operators' verbs: acting on many jobs at once, pausing the queue, draining
/// it; and who counts as an operator (root, or a member of `[access]
/// admin_group`). Everyone else acts on their own jobs only.
extension Daemon {
    func isAdmin(_ session: ClientSession) -> Bool {
        session.uid == 0 || config.adminGroup.map { Owner.isMember(uid: Int(session.uid), of: $0) } == true
    }

    /// `cancel`, `hold` or `release` with `"all": true`: every job in `from`
    /// (narrowed by `owner` and `state`) that the caller may change. A
    /// non-operator's `all` means all of their own jobs. Replies with the ids changed.
    func bulk(_ verb: String, _ request: [String: Any], by session: ClientSession, tag: Any?) throws {
        let (from, to): ([JobRecord.State], JobRecord.State) = switch verb {
        case "cancel": ([.queued, .held, .running], .canceled)
        case "hold": ([.queued], .held)
        default: ([.held], .queued)
        }
        var selection = request
        if !isAdmin(session) {
            if let owner = request["owner"], (owner as? NSNumber)?.intValue ?? (owner as? String).flatMap(Owner.uid(named:)) != Int(session.uid) {
                throw RequestError("only root or members of [access] admin_group may act on other users' jobs")
            }
            selection["owner"] = Int(session.uid)
        }
        selection["all"] = true
        selection.removeValue(forKey: "limit")
        let wanted = try list(selection).filter { from.contains($0.state) }
        let who = Owner(uid: Int(session.uid)).name
        var changed: [String] = []
        for record in wanted {
            if record.state == .running {
                guard let current = running[record.id] else {
                    if verb == "cancel", try store.requestCancel(record.id, by: who) { changed.append(String(record.id)) }
                    continue
                }
                current.assignment.control.cancel.store(true, ordering: .relaxed)
            } else {
                let past = verb == "cancel" ? "canceled" : verb == "hold" ? "held" : "released"
                guard try store.transition(record.id, from: [record.state], to: to, reason: "\(past) (all) by \(who)",
                                           error: to == .canceled ? "canceled" : nil)
                else { continue }
                publish(record.id, event: to == .canceled ? "end" : "state")
            }
            changed.append(String(record.id))
        }
        log.info("\(verb) --all by \(who): \(changed.count) job(s)")
        reply(session, tag: tag, ["jobs": changed])
        dispatch()
    }

    /// `pause`, `resume`, `drain`: the queue stops starting jobs (running ones
    /// finish), starts again, or pauses and answers once nothing runs. The pause
    /// is a file in the state directory, so it outlasts a restart.
    func queueControl(_ verb: String, by session: ClientSession, tag: Any?) throws {
        guard isAdmin(session) else { throw RequestError("only root or members of [access] admin_group may \(verb) the queue") }
        let who = Owner(uid: Int(session.uid)).name
        switch verb {
        case "resume":
            unlink(pausePath)
            log.notice("queue resumed by \(who)")
            reply(session, tag: tag, ["paused": false])
            dispatch()
        default:
            if !isPaused {
                guard FileManager.default.createFile(atPath: pausePath, contents: Data("paused by \(who)\n".utf8)) else {
                    throw DiffusionError.system("cannot write \(pausePath)")
                }
                log.notice("queue paused by \(who)")
            }
            if verb == "pause" || running.isEmpty {
                reply(session, tag: tag, ["paused": true, "running": running.count])
            } else {
                drainWaiters.append((session, tag))
            }
        }
        if notifier.isActive { notifier.status(statusLine) }
    }

    var pausePath: String { "\(config.stateDirectory)/paused" }
    var isPaused: Bool { FileManager.default.fileExists(atPath: pausePath) }

    /// Answers `drain`s once the last running job has ended.
    func answerDrains() {
        guard running.isEmpty, !drainWaiters.isEmpty else { return }
        for (session, tag) in drainWaiters { reply(session, tag: tag, ["paused": true, "running": 0]) }
        drainWaiters = []
    }

    /// Refuses a submit that would take its owner past `[limits] jobs_per_user`
    /// or `images_per_user` (jobs queued, held or running).
    func checkUserLimits(_ job: Job, owner: Owner, label: String) throws {
        guard config.jobsPerUser > 0 || config.imagesPerUser > 0 else { return }
        let open = try store.list(states: [.queued, .held, .running], ownerUID: owner.uid, limit: nil)
        if config.jobsPerUser > 0 && open.count + 1 > config.jobsPerUser {
            throw DiffusionError("\(label): \(owner.name) has \(open.count) jobs waiting or running, the limit of [limits] jobs_per_user; wait for some to finish")
        }
        let images = open.reduce(0) { $0 + $1.count }
        if config.imagesPerUser > 0 && images + job.count > config.imagesPerUser {
            throw DiffusionError("\(label): \(owner.name) has \(images) images waiting or running and this job adds \(job.count), over the limit of \(config.imagesPerUser) ([limits] images_per_user)")
        }
    }
}
