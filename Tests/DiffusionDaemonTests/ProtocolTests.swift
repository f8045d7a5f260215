import DiffusionDaemon
import Foundation
import Testing

/// The socket under abuse: bad frames, many watchers, clients that vanish, and
/// a second user.
@Suite(.serialized) struct ProtocolTests {
    @Test func aThousandBadFramesLeaveTheConnectionHealthy() throws {
        let daemon = try DaemonProcess(extra: "[limits]\nmax_request_bytes = 4096")
        let client = try daemon.client()
        let frames: [(Data, String)] = [
            (Data("not json\n".utf8), "a request is one JSON object on one line"),
            (Data("[1, 2]\n".utf8), "a request is one JSON object on one line"),
            (Data("{\"tag\": 1}\n".utf8), "a request needs a \"verb\""),
            (Data("{\"verb\": \"explode\"}\n".utf8), "unknown verb \"explode\""),
            (Data("{\"verb\": \"show\", \"id\": \"424242\"}\n".utf8), "no job 424242"),
            (Data("{\"verb\": \"submit\", \"job\": {\"model\": \"fashion-mnist\", \"steps\": -1}}\n".utf8), "job: steps must be a whole number"),
            (Data(String(repeating: "x", count: 5000).utf8) + Data("\n".utf8), "a request is over the limit of 4096 bytes"),
            (Data("{\"verb\": \"cancel\"}\n".utf8), "this verb needs a job \"id\""),
        ]
        var expected: [String] = []
        var batch = Data()
        for index in 0..<1000 {
            let (frame, message) = frames[index % frames.count]
            batch += frame
            expected.append(message)
            if batch.count > 32768 || index == 999 {
                try client.sendRaw(batch)
                batch = Data()
            }
        }
        for (index, message) in expected.enumerated() {
            let reply = try client.receive()
            #expect(reply["ok"] as? Bool == false)
            let error = reply["error"] as? String ?? ""
            #expect(error.hasPrefix(message), "frame \(index): \(error)")
            if error.isEmpty || !error.hasPrefix(message) { break }
        }
        let pong = try client.call(["verb": "ping", "tag": "after"])
        #expect(pong["ok"] as? Bool == true && pong["tag"] as? String == "after")
        #expect(daemon.stop() == 0)
        #expect(daemon.log.contains("every loop handle closed: yes"))
    }

    @Test func aHundredWatchersAndClientsThatVanish() throws {
        let daemon = try DaemonProcess()
        let blocker = try daemon.submit(DaemonProcess.smallJob(steps: 1000))
        try daemon.wait(for: blocker, state: "running")
        let id = try daemon.submit(DaemonProcess.smallJob(steps: 20, count: 2))
        var watchers: [DaemonClient] = []
        for _ in 0..<100 {
            let client = try daemon.client()
            try client.send(["verb": "watch", "id": id])
            #expect(try client.receive()["event"] as? String == "state")
            watchers.append(client)
        }
        #expect(try daemon.call(["verb": "stats"])["watchers"] as? Int == 100)
        // Half go away while the job is still queued, and a client leaves mid-request.
        watchers.removeLast(50)
        do {
            let rude = try daemon.client()
            try rude.sendRaw(Data("{\"verb\": \"li".utf8))
        }
        #expect(try daemon.diffctl(["cancel", blocker]).status == 0)
        for client in watchers {
            var last: [String: Any] = [:]
            repeat { last = try client.receive() } while last["event"] as? String != "end"
            #expect((last["job"] as? [String: Any])?["state"] as? String == "succeeded")
        }
        let stats = try daemon.call(["verb": "stats"])
        #expect(stats["watchers"] as? Int == 0)
        watchers.removeAll()
        usleep(200_000)
        #expect(try daemon.call(["verb": "stats"])["clients"] as? Int == 1)
        #expect(daemon.stop() == 0)
    }

    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func onlyTheOwnerOrRootMayChangeAJob() throws {
        let daemon = try DaemonProcess()
        let nobody = 65534
        let blocker = try daemon.submit(DaemonProcess.smallJob(steps: 1000))
        try daemon.wait(for: blocker, state: "running")

        let theirs = try daemon.diffctl(["submit", "--json", "--model", "fashion-mnist", "--steps", "3", "--class", "2"], asUID: nobody)
        #expect(theirs.status == 0, "\(theirs.stderr)")
        let theirJob = try #require(theirs.json as? [String: Any])
        #expect((theirJob["owner"] as? [String: Any])?["uid"] as? Int == nobody)
        let theirID = try #require(theirJob["id"] as? String)

        let denied = try daemon.diffctl(["cancel", blocker], asUID: nobody)
        #expect(denied.status == 1)
        #expect(denied.stderr == "diffctl: job \(blocker) belongs to root; only its owner, root or [access] admin_group may change it\n")
        #expect(try daemon.diffctl(["hold", theirID], asUID: nobody).status == 0)
        #expect(try daemon.diffctl(["release", theirID]).status == 0)

        // A spool file's owner is the file's owner, whatever it claims.
        let tmp = "\(daemon.state)/spool/tmp/theirs.json"
        try #"{"model": "fashion-mnist", "steps": 3, "class": 4}"#.write(toFile: tmp, atomically: false, encoding: .utf8)
        chown(tmp, uid_t(nobody), gid_t(nobody))
        rename(tmp, "\(daemon.state)/spool/new/theirs.json")
        #expect(try daemon.diffctl(["cancel", blocker]).status == 0)
        try daemon.wait(for: theirID, state: "succeeded")
        var spoolJob: [String: Any]?
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let jobs = try daemon.call(["verb": "list", "owner": nobody])["jobs"] as? [[String: Any]] ?? []
            spoolJob = jobs.first { $0["source"] as? String == "spool theirs.json" && $0["state"] as? String == "succeeded" }
            if spoolJob != nil { break }
            usleep(50_000)
        }
        #expect(spoolJob != nil)
        // Their outputs are theirs.
        var info = stat()
        #expect(stat("\(daemon.state)/outputs/\(theirID)/image-0000.png", &info) == 0)
        #expect(Int(info.st_uid) == nobody)
        #expect(daemon.stop() == 0)
    }
}
