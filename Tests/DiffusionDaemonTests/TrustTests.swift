import DiffusionKernels
import DiffusionRender
import Foundation
import Testing
@testable import DiffusionDaemon

/// What a user or a hostile local user can send the daemon, and what it must
/// never do with it: queue a job that cannot render, crash, or give away a file.
@Suite(.serialized) struct TrustTests {
    /// A C sampler plugin built as ABI 1.0 (its structs end where 1.0's did), so
    /// it also shows 1.0 plugins still load: `failstep` fails every step;
    /// `nosave` leaves its required `save_state` slot NULL.
    static func compilePlugins(into directory: String) throws {
        let source = """
            #include "diffusion_plugin.h"
            #include <stdio.h>
            static int token;
            static void *create(const dfn_host *h, const dfn_options *o, const dfn_noise_levels *l, char *e, size_t s) { return &token; }
            static void destroy(void *i) {}
            static int32_t timesteps(void *i, int32_t steps, int32_t *t, int32_t capacity, char *e, size_t s) {
                for (int32_t k = 0; k < steps && k < capacity; k++) t[k] = 999 - k;
                return steps;
            }
            static int step(void *i, int32_t index, int32_t images, int64_t size, const float *m, const float *x,
                            float *p, float *o, dfn_generator *const *g, char *e, size_t s) {
                snprintf(e, s, "this step always fails");
                return DFN_ERROR;
            }
            static int64_t save(void *i, void *b, int64_t c) { return 0; }
            static int restore(void *i, const void *b, int64_t n, char *e, size_t s) { return DFN_OK; }
            #define ABI_1_0 (1u << 16)
            #define SAMPLER_1_0 offsetof(dfn_sampler, diffusers_classes)
            static const dfn_sampler fails = {ABI_1_0, SAMPLER_1_0, "failstep", "fails", create, destroy,
                                              timesteps, step, save, restore};
            static const dfn_sampler nosave = {ABI_1_0, SAMPLER_1_0, "nosave", "no save_state", create, destroy,
                                               timesteps, step, 0, restore};
            static const dfn_sampler *const list[] = {&fails, &nosave};
            static const dfn_plugin plugin = {ABI_1_0, sizeof(dfn_plugin), "test-samplers", "0", 0, 0, 2, list, 0, 0};
            const dfn_plugin *diffusion_plugin_init(const dfn_host *host) { return &plugin; }
            """
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try source.write(toFile: "\(directory)/test.c", atomically: true, encoding: .utf8)
        let outcome = try DaemonProcess.run("/usr/bin/cc", [
            "-shared", "-fPIC", "-I\(DaemonProcess.packageRoot)/Sources/DiffusionPluginABI",
            "-o", "\(directory)/libdiffusion-plugin-test.so", "\(directory)/test.c"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        try FileManager.default.removeItem(atPath: "\(directory)/test.c")
    }

    @Test func aPluginsBadStepFailsOnlyItsJobAndANullSlotIsRefused() throws {
        let plugins = "/tmp/dfn-plugins-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: plugins) }
        try Self.compilePlugins(into: plugins)
        let daemon = try DaemonProcess(batchImages: 2, plugins: [plugins])
        #expect(daemon.log.contains("component nosave: its required slot save_state is NULL"), "\(daemon.log)")
        var failing = DaemonProcess.smallJob(steps: 6)
        failing["sampler"] = "failstep"
        let bad = try daemon.submit(failing)
        let good = try daemon.submit(DaemonProcess.smallJob(steps: 6))
        let failed = try daemon.wait(for: bad, state: "failed")
        #expect(failed["error"] as? String == "sampler failstep: this step always fails")
        try daemon.wait(for: good, state: "succeeded")
        var refused = DaemonProcess.smallJob()
        refused["sampler"] = "nosave"
        let reply = try daemon.call(["verb": "submit", "job": refused])
        #expect((reply["error"] as? String)?.contains("sampler \"nosave\" is not provided by any plugin") == true, "\(reply)")
        #expect(daemon.stop() == 0)
    }

    /// Every job that could not render is refused at submit, over the socket and
    /// through the spool, with one line; `--dry-run` checks the same way.
    @Test func jobsThatCannotRenderAreRefusedAtAdmission() throws {
        let daemon = try DaemonProcess()
        let betas = Array(repeating: 0.5, count: 999) + [1.5]
        let cases: [([String: Any], String)] = [
            (["sampler_options": ["etta": 0.5]], "job: sampler_options: etta is not a setting of sampler ddim or schedule squaredcos_cap_v2"),
            (["class": 11], "job: class 11 is out of range: this model has labels 0...10"),
            (["guidance": ["kind": "cfg", "scale": -1e308]], "job: guidance cfg: scale must lie in [-1000.0, 1000.0], not -1e+308"),
            (["guidance": ["kind": "cfg", "rescale": 0.7]], "job: guidance: rescale is not a setting of cfg"),
            (["sampler_options": ["trained_betas": betas]], "job: beta_schedule trained_betas: every beta must lie in (0, 1), found 1.5"),
            (["formats": ["npy"], "model": "fashion-mnist\u{0}x"], "job: model must be the name of an installed model"),
        ]
        let before = try daemon.call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []
        for (change, message) in cases {
            let job = DaemonProcess.smallJob().merging(change) { $1 }
            let reply = try daemon.call(["verb": "submit", "job": job])
            #expect((reply["error"] as? String)?.hasPrefix(message) == true, "\(change): \(reply)")
            let dry = try daemon.call(["verb": "submit", "job": job, "dry_run": true])
            #expect((dry["error"] as? String)?.hasPrefix(message) == true, "\(change): \(dry)")
        }
        #expect((try daemon.call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []).count == before.count)

        // The same check through the spool: rejected with the reason.
        try daemon.drop("out-of-range.json", #"{"model": "fashion-mnist", "class": 11}"#)
        let error = "\(daemon.state)/spool/rejected/out-of-range.error"
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: error) && Date() < deadline { usleep(50_000) }
        #expect(try String(contentsOfFile: error, encoding: .utf8) == "out-of-range.json: class 11 is out of range: this model has labels 0...10\n")

        // diffctl submit --dry-run prints the resolved job, queues nothing, exits 0; a bad one exits 1.
        let dry = try daemon.diffctl(["submit", "--dry-run", "--model", "fashion-mnist", "--steps", "5", "--class", "3", "--seed", "2"])
        #expect(dry.status == 0, "\(dry.stderr)")
        let resolved = try #require(dry.json as? [String: Any])
        #expect(resolved["sampler"] as? String == "ddim" && resolved["steps"] as? Int == 5)
        #expect(resolved["beta_schedule"] as? String == "squaredcos_cap_v2")
        let badDry = try daemon.diffctl(["submit", "--dry-run", "--model", "fashion-mnist", "--class", "30"])
        #expect(badDry.status == 1 && badDry.stderr == "diffctl: job: class 30 is out of range: this model has labels 0...10\n")
        #expect((try daemon.call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []).count == before.count)
        #expect(daemon.stop() == 0)
    }

    /// A job whose samples diverge fails with the reason and the daemon stays up.
    @Test func aDivergingJobFailsAndTheDaemonStaysUp() throws {
        let daemon = try DaemonProcess()
        var job = DaemonProcess.smallJob(steps: 20)
        job["sampler_options"] = ["trained_betas": Array(repeating: 0.5, count: 1000), "clip_sample": false]
        let id = try daemon.submit(job)
        let failed = try daemon.wait(for: id, state: "failed")
        #expect((failed["error"] as? String)?.contains("produced values that are not finite (NaN or infinity)") == true, "\(failed)")
        #expect(failed["attempts"] as? Int == 1)
        #expect(try daemon.diffctl(["ping"]).status == 0)
        #expect(daemon.stop() == 0)
    }

    /// The dead-letter rule through the real daemon: a job running at two
    /// unclean exits in a row is failed, so it cannot crash the service forever.
    @Test func aJobRunningAtTwoCrashesInARowIsNotRunAgain() throws {
        let daemon = try DaemonProcess()
        let id = try daemon.submit(DaemonProcess.smallJob(steps: 1000))
        for _ in 0..<2 {
            try daemon.wait(for: id, state: "running")
            daemon.kill9()
            try daemon.start()
        }
        let failed = try daemon.wait(for: id, state: "failed", seconds: 10)
        #expect((failed["error"] as? String)?.hasPrefix("the daemon exited uncleanly 2 times in a row while this job ran") == true)
        #expect(daemon.log.contains("failed as a poison job"))
        let retried = try daemon.diffctl(["retry", id])
        #expect(retried.status == 0, "\(retried.stderr) \(daemon.log)")
        try daemon.wait(for: id, state: "running")
        #expect(daemon.stop() == 0)
    }

    /// A checkpoint that does not decode is said in the job's events, and the job starts over.
    @Test(DaemonProcess.readsSQLiteFiles) func aCorruptCheckpointIsRecorded() throws {
        let daemon = try DaemonProcess()
        let blocker = try daemon.submit(DaemonProcess.smallJob(steps: 1000))
        try daemon.wait(for: blocker, state: "running")
        let id = try daemon.submit(DaemonProcess.smallJob(steps: 4))
        #expect(try daemon.diffctl(["hold", id]).status == 0)
        try Data("{\"format\": 1, \"step\": ".utf8).write(to: URL(fileURLWithPath: "\(daemon.state)/checkpoints/\(id).json"))
        #expect(try daemon.diffctl(["release", id]).status == 0)
        #expect(try daemon.diffctl(["cancel", blocker]).status == 0)
        try daemon.wait(for: id, state: "succeeded")
        let events = try daemon.call(["verb": "show", "id": id])["events"] as? [[String: Any]] ?? []
        #expect(events.contains { ($0["reason"] as? String)?.contains("is corrupt (22 bytes that do not decode); starting from step 0") == true },
                "\(events)")
        #expect(daemon.stop() == 0)
    }

    /// The queue holds every job's JSON: the daemon's alone.
    @Test(DaemonProcess.readsSQLiteFiles) func theQueueAndCheckpointsAreTheDaemonsAlone() throws {
        let daemon = try DaemonProcess(extra: "[checkpoint]\nevery_steps = 2")
        let id = try daemon.submit(DaemonProcess.smallJob(steps: 400))
        try daemon.wait(for: id, state: "running")
        let checkpoint = "\(daemon.state)/checkpoints/\(id).json"
        let deadline = Date().addingTimeInterval(30)
        while !FileManager.default.fileExists(atPath: checkpoint) && Date() < deadline { usleep(20_000) }
        for path in ["\(daemon.state)/queue.sqlite", "\(daemon.state)/queue.sqlite-wal", checkpoint] {
            var info = stat()
            #expect(stat(path, &info) == 0, "\(path) is missing")
            #expect(info.st_mode & 0o777 == 0o600, "\(path) has mode \(String(info.st_mode & 0o777, radix: 8))")
        }
        #expect(daemon.stop() == 0)
    }

    static let nobody = 65534

    /// Outputs belong to the job's owner and its group, 0750/0640. A hostile
    /// owner swapping files for symbolic links while the job publishes never gets
    /// the daemon to chown anything else.
    @Test(.enabled(if: geteuid() == 0, "giving files away needs root"))
    func outputsAreGivenAwayByDescriptorOnly() throws {
        let daemon = try DaemonProcess()
        let target = "\(daemon.root)/secret"
        FileManager.default.createFile(atPath: target, contents: Data("root's".utf8), attributes: [.posixPermissions: 0o600])
        // The attacker, as the job's owner: replace whatever it can reach in a partial output with a link to the secret.
        let attack = Process()
        attack.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        attack.arguments = ["--reuid=\(Self.nobody)", "--regid=65534", "--clear-groups", "/bin/sh", "-c",
                            "while :; do for f in \(daemon.state)/outputs/.*.partial/* \(daemon.state)/outputs/*/*; do ln -sf \(target) \"$f\" 2>/dev/null; done; done"]
        try attack.run()
        defer { if attack.isRunning { attack.terminate(); attack.waitUntilExit() } }
        var ids: [String] = []
        for seed in 0..<5 {
            let submitted = try daemon.diffctl(["submit", "--json", "--model", "fashion-mnist", "--steps", "2", "--count", "4",
                                                "--seed", "\(seed)", "--class", "1"], asUID: Self.nobody)
            #expect(submitted.status == 0, "\(submitted.stderr)")
            ids.append(try #require((submitted.json as? [String: Any])?["id"] as? String))
        }
        for id in ids { try daemon.wait(for: id, state: "succeeded") }
        attack.terminate()
        attack.waitUntilExit()
        var info = stat()
        #expect(stat(target, &info) == 0 && info.st_uid == 0 && info.st_mode & 0o777 == 0o600, "the secret was given away")
        let group = Owner.primaryGroup(uid_t(Self.nobody))!
        for id in ids {
            let directory = "\(daemon.state)/outputs/\(id)"
            #expect(lstat(directory, &info) == 0 && info.st_uid == Self.nobody && info.st_gid == group && info.st_mode & 0o777 == 0o750)
            for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
                #expect(lstat("\(directory)/\(name)", &info) == 0)
                // After publishing, the owner may replace its own files as it likes; the daemon's are 0640 and its.
                if info.st_mode & S_IFMT == S_IFREG {
                    #expect(info.st_uid == Self.nobody && info.st_gid == group && info.st_mode & 0o777 == 0o640, "\(directory)/\(name)")
                }
            }
        }
        #expect(daemon.stop() == 0)
    }

    /// A FIFO dropped in the spool is removed, not kept in rejected/.
    @Test func aFIFOInTheSpoolIsRemoved() throws {
        let daemon = try DaemonProcess()
        #expect(mkfifo("\(daemon.state)/spool/new/pipe.json", 0o644) == 0)
        let error = "\(daemon.state)/spool/rejected/pipe.error"
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: error) && Date() < deadline { usleep(50_000) }
        #expect(try String(contentsOfFile: error, encoding: .utf8) == "not a regular file\n")
        #expect(!FileManager.default.fileExists(atPath: "\(daemon.state)/spool/rejected/pipe.json"))
        #expect(!FileManager.default.fileExists(atPath: "\(daemon.state)/spool/new/pipe.json"))
        #expect(daemon.stop() == 0)
    }

    @Test func bothCommandsSayTheirVersion() throws {
        for binary in ["diffusiond", "diffctl"] {
            let outcome = try DaemonProcess.run("\(DaemonProcess.buildDirectory)/\(binary)", ["--version"])
            #expect(outcome.status == 0 && outcome.stdout == "\(RenderOutput.programVersion)\n", "\(binary): \(outcome)")
        }
    }
}

/// diffctl as scripts use it: held submits, ids alone, waiting on several jobs.
@Suite(.serialized) struct DiffctlScriptingTests {
    @Test func holdQuietAndWait() throws {
        let daemon = try DaemonProcess()
        let held = try daemon.diffctl(["submit", "--quiet", "--hold", "--model", "fashion-mnist", "--steps", "3", "--class", "2"])
        #expect(held.status == 0, "\(held.stderr)")
        let id = held.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(Int(id) != nil && held.stdout == "\(id)\n")
        #expect(try daemon.job(id)["state"] as? String == "held")
        let other = try daemon.submit(DaemonProcess.smallJob(steps: 3))
        #expect(try daemon.diffctl(["release", id]).status == 0)
        let waited = try daemon.diffctl(["wait", id, other])
        #expect(waited.status == 0, "\(waited.stderr)")
        #expect(try daemon.job(id)["state"] as? String == "succeeded" && daemon.job(other)["state"] as? String == "succeeded")

        var diverging = DaemonProcess.smallJob(steps: 5)
        diverging["sampler_options"] = ["trained_betas": Array(repeating: 0.5, count: 1000), "clip_sample": false]
        let bad = try daemon.submit(diverging)
        let failed = try daemon.diffctl(["wait", other, bad])
        #expect(failed.status == 1 && failed.stderr == "diffctl: job(s) \(bad) did not succeed\n", "\(failed)")

        // watch into a pipe: a line per tenth of the steps, not per step.
        let long = try daemon.submit(DaemonProcess.smallJob(steps: 40))
        let watched = try daemon.diffctl(["watch", long])
        #expect(watched.status == 0)
        let lines = watched.stderr.split(separator: "\n")
        #expect(lines.count <= 13 && lines.count >= 5, "\(watched.stderr)")
        #expect(daemon.stop() == 0)
    }

    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "needs root and setpriv"))
    func aUserWithoutAccessIsToldWhy() throws {
        let daemon = try DaemonProcess()
        chmod(daemon.socket, 0o600)  // as if the user were not in the socket's group
        let refused = try daemon.diffctl(["ping"], asUID: 65534)
        #expect(refused.status == 2)
        #expect(refused.stderr.contains("permission denied on \(daemon.socket): only members of the socket's group (diffusiond)"), "\(refused.stderr)")
        #expect(daemon.stop() == 0)
    }
}
