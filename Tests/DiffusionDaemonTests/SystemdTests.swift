import DiffusionDaemon
import DiffusionKernels
import Foundation
import Synchronization
import Testing

/// The daemon's side of systemd without systemd as PID 1: the test plays the
/// manager, reading $NOTIFY_SOCKET and passing a listening socket as fd 3.
@Suite(.serialized) struct SystemdTests {
    /// An AF_UNIX socket bound at `path` (datagram for notify, stream for activation).
    static func boundSocket(_ path: String, type: Int32) throws -> Int32 {
        let fd = socket(AF_UNIX, type, 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8))
            raw[path.utf8.count] = 0
        }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, status == 0 else { throw DiffusionError("cannot bind \(path)") }
        return fd
    }

    @Test func notifiesReadyStatusWatchdogAndStopping() throws {
        let daemon = try DaemonProcess(start: false)
        let notifyPath = "\(daemon.root)/notify.sock"
        let fd = try Self.boundSocket(notifyPath, type: Int32(SOCK_DGRAM.rawValue))
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // The manager's side: read every datagram as it comes (a unix datagram
        // queue holds only ten; the daemon must never block on it).
        let messages = Mutex<[String]>([])
        let reading = Atomic<Bool>(true)
        let readerDone = DispatchSemaphore(value: 0)
        let reader = Thread {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while reading.load(ordering: .relaxed) {
                let count = recv(fd, &buffer, buffer.count, 0)
                if count > 0 { messages.withLock { $0.append(String(decoding: buffer[..<count], as: UTF8.self)) } }
            }
            readerDone.signal()
        }
        reader.start()
        // The socket is closed only after the reader stopped: closed under it, its
        // number could be another test's connection by its next recv.
        defer {
            reading.store(false, ordering: .relaxed)
            readerDone.wait()
            close(fd)
        }
        func received(within seconds: Double, _ condition: ([String]) -> Bool) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if messages.withLock({ condition($0) }) { return true }
                usleep(20_000)
            }
            return false
        }
        try daemon.start(environment: ["NOTIFY_SOCKET": notifyPath, "WATCHDOG_USEC": "200000"])
        #expect(received(within: 10) { $0.contains { $0.contains("READY=1") } && $0.contains("WATCHDOG=1") })
        let ready = messages.withLock { $0.first { $0.contains("READY=1") } } ?? ""
        #expect(ready.contains("STATUS=idle; 0 queued"))
        #expect(ready.contains("MAINPID=\(daemon.process!.processIdentifier)"))
        let id = try daemon.submit(DaemonProcess.smallJob(steps: 3))
        try daemon.wait(for: id, state: "succeeded")
        // the watchdog keeps pinging, however fast the job went (every 100 ms here)
        #expect(received(within: 5) { $0.filter { $0 == "WATCHDOG=1" }.count >= 2 })
        // systemctl reload: RELOADING=1 with the monotonic time, then READY=1; a
        // bad file keeps the running configuration and says so in STATUS.
        kill(daemon.process!.processIdentifier, SIGHUP)
        #expect(received(within: 10) { all in
            guard let reloading = all.firstIndex(where: { $0.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") }) else { return false }
            return all[reloading...].contains { $0.hasPrefix("READY=1") }
        })
        let good = try String(contentsOfFile: daemon.configPath, encoding: .utf8)
        try (good + "\n[limits]\nmax_steps = \"many\"\n").write(toFile: daemon.configPath, atomically: true, encoding: .utf8)
        kill(daemon.process!.processIdentifier, SIGHUP)
        #expect(received(within: 10) { $0.contains { $0.hasPrefix("READY=1\nSTATUS=reload failed, running the old configuration: ") && $0.contains("limits.max_steps must be") } })
        #expect(daemon.stop() == 0)
        #expect(received(within: 5) { $0.contains { $0.hasPrefix("STOPPING=1") } })
        let all = messages.withLock { $0 }
        #expect(all.contains { $0.hasPrefix("STATUS=rendering job \(id)") })
    }

    /// Priority prefixes only for the journal (stderr is $JOURNAL_STREAM's file);
    /// elsewhere, the time and level.
    @Test func logLinesSuitWhereTheyGo() throws {
        let plain = try DaemonProcess()
        #expect(plain.stop() == 0)
        let first = plain.log.split(separator: "\n").first.map(String.init) ?? ""
        #expect(first.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|notice|debug): "#, options: .regularExpression) != nil, "\(first)")
        #expect(!plain.log.contains("<6>"))

        let journal = try DaemonProcess(start: false)
        FileManager.default.createFile(atPath: journal.logPath, contents: nil)
        var info = stat()
        #expect(stat(journal.logPath, &info) == 0)
        try journal.start(environment: ["JOURNAL_STREAM": "\(info.st_dev):\(info.st_ino)"])
        #expect(journal.stop() == 0)
        let lines = journal.log.split(separator: "\n")
        #expect(!lines.isEmpty && lines.allSatisfy { $0.range(of: #"^<[2-7]>"#, options: .regularExpression) != nil }, "\(journal.log)")
    }

    @Test func adoptsTheSocketSystemdPasses() throws {
        let daemon = try DaemonProcess(start: false)
        let activated = "\(daemon.root)/activated.sock"
        let listener = try Self.boundSocket(activated, type: Int32(SOCK_STREAM.rawValue))
        #expect(listen(listener, 16) == 0)
        let log = open(daemon.logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, listener, 3)
        posix_spawn_file_actions_adddup2(&actions, log, 1)
        posix_spawn_file_actions_adddup2(&actions, log, 2)
        // LISTEN_PID must be the daemon's own pid: a shell sets it to $$ and execs.
        let arguments = ["/bin/sh", "-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --config \"$1\"",
                         "\(DaemonProcess.buildDirectory)/diffusiond", daemon.configPath]
        var argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        #expect(posix_spawn(&pid, "/bin/sh", &actions, nil, &argv, environ) == 0)
        close(log)
        close(listener)
        // Once reaped, the pid may be another test's daemon: only a pid not yet waited for is killed.
        var reaped = false
        defer {
            if !reaped {
                kill(pid, SIGKILL)
                var status: Int32 = 0
                waitpid(pid, &status, 0)
            }
        }
        var pong: [String: Any]?
        let deadline = Date().addingTimeInterval(20)
        while pong == nil && Date() < deadline {
            pong = try? DaemonClient(socketPath: activated).call(["verb": "ping"])
            if pong == nil { usleep(20_000) }
        }
        #expect(pong?["ok"] as? Bool == true)
        #expect(daemon.log.contains("listening on the socket systemd passed (fd 3)"))
        #expect(!FileManager.default.fileExists(atPath: daemon.socket), "the configured socket path was bound as well")
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        reaped = true
        #expect(status == 0)
        // The socket belongs to systemd: the daemon leaves it in place.
        #expect(FileManager.default.fileExists(atPath: activated))
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze")))
    func theServiceUnitScoresTwoOrLower() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-analyze")
        process.arguments = ["security", "--offline=yes", "\(DaemonProcess.packageRoot)/systemd/diffusiond.service"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let line = try #require(text.split(separator: "\n").first { $0.contains("Overall exposure level for diffusiond.service:") })
        let score = try #require(Double(line.split(separator: ":")[1].split(separator: " ")[0]))
        print("systemd-analyze security --offline=yes: \(score)")
        #expect(score <= 2.0, "\(line)")
        #expect(!text.contains("PrivateUsers=yes") && !text.contains("DynamicUser=yes"))
    }
}
