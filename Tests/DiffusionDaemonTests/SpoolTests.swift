import DiffusionKernels
import Foundation
import Testing
@testable import DiffusionDaemon

/// The spool directory with a real daemon: what it takes, what it refuses, and
/// what a crash between queuing and unlinking leaves.
@Suite(.serialized) struct SpoolTests {
    @Test func twoHundredMalformedFilesAreRejectedWithTheirReasons() throws {
        let daemon = try DaemonProcess(extra: "[limits]\nmax_request_bytes = 2048", start: false)
        try daemon.start()
        daemon.stop()
        let new = "\(daemon.state)/spool/new"
        let kinds: [(String, (String) throws -> Void)] = [
            ("not valid JSON", { try "{\"model\": ".write(toFile: $0, atomically: false, encoding: .utf8) }),
            ("a job is a JSON object", { try "[1]".write(toFile: $0, atomically: false, encoding: .utf8) }),
            ("unknown key \"colour\"", { try #"{"model": "fashion-mnist", "colour": 1}"#.write(toFile: $0, atomically: false, encoding: .utf8) }),
            ("no model named \"nope\"", { try #"{"model": "nope"}"#.write(toFile: $0, atomically: false, encoding: .utf8) }),
            ("model must be the name", { try #"{"model": "/etc"}"#.write(toFile: $0, atomically: false, encoding: .utf8) }),
            ("init_noise must be inline", { try #"{"model": "fashion-mnist", "init_noise": "/etc/passwd"}"#.write(toFile: $0, atomically: false, encoding: .utf8) }),
            ("steps 5000 is over the limit", { try #"{"model": "fashion-mnist", "steps": 5000}"#.write(toFile: $0, atomically: false, encoding: .utf8) }),
            ("a symbolic link", { guard symlink("/etc/passwd", $0) == 0 else { throw DiffusionError("symlink") } }),
            ("has 2 links", { path in
                try #"{"model": "fashion-mnist"}"#.write(toFile: path + ".orig", atomically: false, encoding: .utf8)
                guard link(path + ".orig", path) == 0 else { throw DiffusionError("link") }
            }),
            ("over the limit of 2048", { try String(repeating: " ", count: 3000).write(toFile: $0, atomically: false, encoding: .utf8) }),
            ("not a regular file", { try FileManager.default.createDirectory(atPath: $0, withIntermediateDirectories: false) }),
            ("sampler \"plms\" is not provided by any plugin", { try #"{"model": "fashion-mnist", "sampler": "plms"}"#.write(toFile: $0, atomically: false, encoding: .utf8) }),
        ]
        var expected: [String: String] = [:]
        for index in 0..<200 {
            let (reason, make) = kinds[index % kinds.count]
            let name = String(format: "bad-%03d.json", index)
            try make("\(daemon.root)/\(name)")
            guard rename("\(daemon.root)/\(name)", "\(new)/\(name)") == 0 else { throw DiffusionError("rename \(name)") }
            expected[String(name.dropLast(5))] = reason
        }
        // Names the spool ignores, and one good job.
        try "{}".write(toFile: "\(new)/.hidden.json", atomically: false, encoding: .utf8)
        try "{}".write(toFile: "\(new)/notes.txt", atomically: false, encoding: .utf8)
        try daemon.drop("good.json", #"{"model": "fashion-mnist", "steps": 3}"#)

        try daemon.start()
        let deadline = Date().addingTimeInterval(30)
        while try Date() < deadline && (FileManager.default.contentsOfDirectory(atPath: new)).count > 2 { usleep(50_000) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: new).sorted() == [".hidden.json", "notes.txt"])
        for (base, reason) in expected {
            let error = try String(contentsOfFile: "\(daemon.state)/spool/rejected/\(base).error", encoding: .utf8)
            #expect(error.contains(reason) && error.hasSuffix("\n") && error.split(separator: "\n").count == 1, "\(base): \(error)")
            // A rejected file is kept for its owner to see; a directory or FIFO is removed.
            let kept = FileManager.default.fileExists(atPath: "\(daemon.state)/spool/rejected/\(base).json")
                || (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(daemon.state)/spool/rejected/\(base).json")) != nil
            #expect(kept == (reason != "not a regular file"), "\(base): \(reason)")
        }
        let jobs = try daemon.call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []
        #expect(jobs.count == 1 && jobs.first?["source"] as? String == "spool good.json")
        try daemon.wait(for: jobs.first?["id"] as? String ?? "", state: "succeeded")
        #expect(try daemon.diffctl(["ping"]).status == 0)
        #expect(daemon.stop() == 0)
        #expect(daemon.log.components(separatedBy: "rejected:").count - 1 == 200)
    }

    /// A daemon that queued a spool file and stopped before unlinking it must
    /// unlink it at the next start without queuing it again.
    @Test(DaemonProcess.readsSQLiteFiles) func aFileAlreadyQueuedIsNotQueuedTwice() throws {
        let daemon = try DaemonProcess(start: false)
        try daemon.start()
        daemon.stop()
        let contents = #"{"model": "fashion-mnist", "steps": 3}"#
        let store = try JobStore(path: "\(daemon.state)/queue.sqlite")
        let record = try store.insert(job: Data(contents.utf8), model: "fashion-mnist", steps: 3, count: 1, priority: 0, owner: Owner(uid: 0),
                                      source: "spool crash.json", maxAttempts: 3,
                                      receipt: ("crash.json", Spool.hash(Data(contents.utf8))))
        try daemon.drop("crash.json", contents)
        try daemon.start()
        try daemon.wait(for: String(record.id), state: "succeeded")
        let jobs = try daemon.call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []
        #expect(jobs.count == 1)
        #expect(!FileManager.default.fileExists(atPath: "\(daemon.state)/spool/new/crash.json"))
        // Dropping the same file again later is a new job.
        try daemon.drop("crash.json", contents)
        let deadline = Date().addingTimeInterval(20)
        var count = 1
        while count == 1 && Date() < deadline {
            count = (try daemon.call(["verb": "list", "all": true])["jobs"] as? [[String: Any]] ?? []).count
            usleep(50_000)
        }
        #expect(count == 2)
        #expect(daemon.stop() == 0)
    }
}

/// Spool hygiene: abandoned and stale files go, with a log line; fresh ones stay.
@Suite struct SpoolHygieneTests {
    @Test func abandonedFilesAreRemovedWhenOld() throws {
        let daemon = try DaemonProcess(extra: "[spool]\ntmp_max_age_hours = 1\n[history]\nkeep_days = 1", start: false)
        try daemon.start()
        daemon.stop()
        let spool = "\(daemon.state)/spool"
        let old = ["tmp/died.json", "new/.hidden.json", "new/job.json.tmp", "rejected/bad.json", "rejected/bad.error"]
        let fresh = ["tmp/writing.json", "new/notes.txt", "rejected/recent.error"]
        for name in old + fresh { FileManager.default.createFile(atPath: "\(spool)/\(name)", contents: Data("{}".utf8)) }
        var times = [timespec(tv_sec: time(nil) - 2 * 86400, tv_nsec: 0), timespec(tv_sec: time(nil) - 2 * 86400, tv_nsec: 0)]
        for name in old { #expect(utimensat(AT_FDCWD, "\(spool)/\(name)", &times, 0) == 0) }
        try daemon.start()
        for name in old {
            #expect(!FileManager.default.fileExists(atPath: "\(spool)/\(name)"), "\(name) is still there")
            #expect(daemon.log.contains("spool hygiene: removed \(spool)/\(name)"))
        }
        for name in fresh { #expect(FileManager.default.fileExists(atPath: "\(spool)/\(name)"), "\(name) was removed") }
        #expect(daemon.stop() == 0)
    }
}
