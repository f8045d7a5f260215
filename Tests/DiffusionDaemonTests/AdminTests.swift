import DiffusionDaemon
import Foundation
import Testing

/// Operators' verbs through the real diffctl: many jobs at once, pausing and
/// draining the queue, per-user limits, and who may act on others' jobs.
@Suite(.serialized) struct AdminTests {
    static let nobody = 65534
    static let asOtherUser = Testing.ConditionTrait.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"),
                                                            "needs root and setpriv for a second user")

    @Test(asOtherUser) func allSelectsWhatTheCallerMayChange() throws {
        let daemon = try DaemonProcess()
        #expect(try daemon.diffctl(["pause"]).status == 0)
        let mine = try (0..<3).map { try daemon.submit(DaemonProcess.smallJob(seed: $0)) }
        var theirs: [String] = []
        for seed in 0..<2 {
            let out = try daemon.diffctl(["submit", "--quiet", "--model", "fashion-mnist", "--steps", "3", "--seed", "\(seed)"], asUID: Self.nobody)
            theirs.append(out.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        // A user's --all is their own jobs; naming another user is refused.
        let own = try daemon.diffctl(["hold", "--all"], asUID: Self.nobody)
        #expect(own.status == 0 && own.stdout == "2 job(s) held: \(theirs.sorted(by: { Int($0)! > Int($1)! }).joined(separator: ", "))\n", "\(own)")
        let other = try daemon.diffctl(["cancel", "--all", "--user", "root"], asUID: Self.nobody)
        #expect(other.status == 1 && other.stderr == "diffctl: only root or members of [access] admin_group may act on other users' jobs\n")
        for id in mine { #expect(try daemon.job(id)["state"] as? String == "queued") }
        // root narrows by user and state.
        let released = try daemon.diffctl(["release", "--all", "--user", "nobody", "--state", "held", "--json"])
        #expect(Set((released.json as? [String]) ?? []) == Set(theirs))
        let canceled = try daemon.diffctl(["cancel", "--all", "--user", "root"])
        #expect(canceled.stdout.hasPrefix("3 job(s) canceled"), "\(canceled)")
        for id in mine { #expect(try daemon.job(id)["state"] as? String == "canceled") }
        for id in theirs { #expect(try daemon.job(id)["state"] as? String == "queued") }
        #expect(try daemon.diffctl(["cancel"]).status != 0)
        #expect(daemon.stop() == 0)
    }

    @Test func pauseResumeAndDrain() throws {
        let daemon = try DaemonProcess()
        let running = try daemon.submit(DaemonProcess.smallJob(steps: 60))
        try daemon.wait(for: running, state: "running")
        let paused = try daemon.diffctl(["pause"])
        #expect(paused.status == 0 && paused.stdout == "queue paused; 1 job(s) running\n")
        let waiting = try daemon.submit(DaemonProcess.smallJob(steps: 3))
        // drain answers once the running job has ended; the queued one stays queued.
        let drained = try daemon.diffctl(["drain"])
        #expect(drained.status == 0 && drained.stdout == "queue paused; 0 job(s) running\n", "\(drained)")
        #expect(try daemon.job(running)["state"] as? String == "succeeded")
        #expect(try daemon.job(waiting)["state"] as? String == "queued")
        // The pause outlasts a restart.
        #expect(daemon.stop() == 0)
        try daemon.start()
        usleep(500_000)
        #expect(try daemon.job(waiting)["state"] as? String == "queued")
        #expect(try daemon.diffctl(["resume"]).stdout == "queue running\n")
        try daemon.wait(for: waiting, state: "succeeded")
        #expect(daemon.stop() == 0)
    }

    @Test(asOtherUser) func perUserLimitsAndTheAdminGroup() throws {
        let daemon = try DaemonProcess(extra: "[limits]\njobs_per_user = 2\nimages_per_user = 5\n[access]\nadmin_group = \"nogroup\"")
        #expect(try daemon.diffctl(["pause"], asUID: Self.nobody).status == 0, "a member of admin_group may pause")
        let first = try daemon.submit(DaemonProcess.smallJob(count: 2))
        let tooMany = try daemon.diffctl(["submit", "--model", "fashion-mnist", "--count", "4"])
        #expect(tooMany.status == 1)
        #expect(tooMany.stderr == "diffctl: job: root has 2 images waiting or running and this job adds 4, over the limit of 5 ([limits] images_per_user)\n")
        _ = try daemon.submit(DaemonProcess.smallJob())
        let third = try daemon.diffctl(["submit", "--model", "fashion-mnist"])
        #expect(third.stderr == "diffctl: job: root has 2 jobs waiting or running, the limit of [limits] jobs_per_user; wait for some to finish\n")
        // The operator may act on root's job.
        #expect(try daemon.diffctl(["cancel", first], asUID: Self.nobody).status == 0)
        #expect(try daemon.diffctl(["resume"], asUID: Self.nobody).status == 0)
        #expect(daemon.stop() == 0)
    }

    @Test(asOtherUser) func onlyOperatorsControlTheQueue() throws {
        let daemon = try DaemonProcess()
        let refused = try daemon.diffctl(["pause"], asUID: Self.nobody)
        #expect(refused.status == 1 && refused.stderr == "diffctl: only root or members of [access] admin_group may pause the queue\n")
        #expect(daemon.stop() == 0)
    }
}
