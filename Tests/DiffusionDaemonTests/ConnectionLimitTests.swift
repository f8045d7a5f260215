import DiffusionDaemon
import Foundation
import Testing

/// What one socket user can make the daemon hold: bounded connections,
/// buffered input and queued replies, with a log line when a limit bites.
@Suite(.serialized) struct ConnectionLimitTests {
    static func residentBytes(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return (Int(line.split(separator: " ")[1]) ?? 0) * 1024
    }

    @Test func aUserHoldsAtMostItsShareOfConnections() throws {
        let daemon = try DaemonProcess(extra: "[limits]\nconnections_per_user = 3")
        // The start-up ping's connection may still be closing: a refused client retries.
        var held: [DaemonClient] = []
        let deadline = Date().addingTimeInterval(10)
        while held.count < 3 && Date() < deadline {
            let client = try daemon.client()
            if (try? client.call(["verb": "ping"]))?["ok"] as? Bool == true { held.append(client) } else { usleep(50_000) }
        }
        #expect(held.count == 3)
        let fourth = try daemon.client()
        fourth.setReceiveTimeout(seconds: 10)
        let refused = try fourth.receive()
        #expect(refused["error"] as? String == "too many connections from this user (limit 3); close some and try again")
        #expect(throws: (any Error).self) { try fourth.receive() }
        #expect(daemon.log.contains("connections open, the limit of [limits] connections_per_user"))
        _ = held
        #expect(daemon.stop() == 0)
    }

    /// Out of descriptors, the daemon refuses clients with a line and says so in
    /// its log, keeping the descriptors its own files need.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit"), "needs prlimit"))
    func clientsPastTheDescriptorLimitAreToldAndLogged() throws {
        let daemon = try DaemonProcess(start: false)
        try daemon.start(openFiles: 100)
        var held = try (0..<45).map { _ in try daemon.client() }  // more than the 36 the daemon takes
        // A slot the start-up ping left may still be free: each new client pings
        // until one is refused, and it must be within a few.
        var refusal: String?
        for _ in 0..<4 where refusal == nil {
            let late = try daemon.client()
            late.setReceiveTimeout(seconds: 10)
            let reply = try late.call(["verb": "ping"])
            refusal = reply["error"] as? String
            held.append(late)
        }
        #expect(refusal == "the daemon has as many connections as it can hold; try again later", "\(daemon.log)")
        #expect(daemon.log.contains("clients are being turned away: raise LimitNOFILE"))
        // Once clients leave, the daemon serves again, and it never ran short of its own descriptors.
        held.removeAll()
        usleep(300_000)
        let id = try daemon.submit(DaemonProcess.smallJob(steps: 2))
        try daemon.wait(for: id, state: "succeeded")
        #expect(daemon.stop() == 0)
    }

    @Test func unfinishedLinesOfAllClientsStayUnderTheBudget() throws {
        let daemon = try DaemonProcess(extra: "[limits]\nmax_request_bytes = 1048576\nsocket_buffer_bytes = 3000000")
        let chunk = Data(repeating: UInt8(ascii: "x"), count: 900_000)
        var clients: [DaemonClient] = []
        var cut = 0
        for _ in 0..<6 {
            let client = try daemon.client()
            client.setReceiveTimeout(seconds: 10)
            try? client.sendRaw(chunk)  // a client cut off mid-line may see the close
            clients.append(client)
            // Only the client that passes the budget is answered, at once.
            _ = try daemon.call(["verb": "ping"])
        }
        for client in clients.suffix(3) {
            if let reply = try? client.receive(), reply["error"] as? String == "the daemon's request buffers are full; send the request again later" {
                cut += 1
            }
        }
        #expect(cut == 3, "\(cut) of the last 3 clients were cut off")
        #expect(daemon.log.contains("over [limits] socket_buffer_bytes"))
        #expect(try daemon.call(["verb": "ping"])["ok"] as? Bool == true)
        #expect(daemon.stop() == 0)
    }

    @Test func aClientThatNeverReadsIsNotReadEither() throws {
        let daemon = try DaemonProcess()
        let pid = try #require(daemon.process?.processIdentifier)
        let before = Self.residentBytes(pid)
        let client = try daemon.client()
        client.setReceiveTimeout(seconds: 30)
        let requests = 40_000
        let lines = (0..<requests).map { #"{"verb": "stats", "tag": \#($0)}"# }.joined(separator: "\n") + "\n"
        // One thread writes while this one reads: the socket is full duplex.
        nonisolated(unsafe) let writer = client
        let sender = Thread { try? writer.sendRaw(Data(lines.utf8)) }
        sender.start()
        sleep(3)
        // ~10 MB of replies were asked for; the daemon holds about one MiB of them and stops reading.
        let during = Self.residentBytes(pid)
        #expect(during - before < 48 << 20, "the daemon grew by \(during - before) bytes")
        #expect(try daemon.call(["verb": "ping"])["ok"] as? Bool == true)
        for tag in 0..<requests {
            let reply = try client.receive()
            guard reply["tag"] as? Int == tag else {
                Issue.record("reply \(tag) came as \(reply["tag"] ?? "nothing")")
                break
            }
        }
        #expect(daemon.stop() == 0)
    }

    @Test func anIdleConnectionIsClosed() throws {
        let daemon = try DaemonProcess(extra: "[limits]\nidle_seconds = 1")
        let idle = try daemon.client()
        idle.setReceiveTimeout(seconds: 10)
        let watcher = try daemon.client()
        let blocker = try daemon.submit(DaemonProcess.smallJob(steps: 1000))
        try watcher.send(["verb": "watch", "id": blocker])
        #expect(try watcher.receive()["event"] as? String == "state")
        let started = Date()
        #expect(throws: (any Error).self) { try idle.receive() }
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(daemon.log.contains("disconnected after 1 s idle"))
        // A watcher waits as long as its job takes.
        #expect(try daemon.diffctl(["cancel", blocker]).status == 0)
        var last: [String: Any] = [:]
        repeat { last = try watcher.receive() } while last["event"] as? String != "end"
        #expect(daemon.stop() == 0)
    }
}
