import CSocket
import Foundation

/// The daemon's side of sd_notify(3) and sd_listen_fds(3), without libsystemd:
/// datagrams to `$NOTIFY_SOCKET`, and the listening socket systemd passes as
/// fd 3 when `$LISTEN_PID` is this process.
struct SystemdNotifier {
    let socketPath: String?
    /// Half the watchdog interval systemd asks for (`$WATCHDOG_USEC`), in ms.
    let watchdogMilliseconds: UInt64?

    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        socketPath = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        let pidMatches = environment["WATCHDOG_PID"].map { Int32($0) == getpid() } ?? true
        if pidMatches, let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0 {
            watchdogMilliseconds = max(usec / 2000, 1)
        } else {
            watchdogMilliseconds = nil
        }
    }

    /// Whether a manager listens (only then is a status line worth composing).
    var isActive: Bool { socketPath != nil }

    func send(_ message: String) {
        guard let socketPath else { return }
        _ = dfn_send_datagram(socketPath, message)
    }

    func ready(status: String) { send("READY=1\nSTATUS=\(status)\nMAINPID=\(getpid())") }
    func status(_ status: String) { send("STATUS=\(status)") }
    func stopping() { send("STOPPING=1\nSTATUS=stopping") }
    /// A reload begins (systemd.service(5) Type=notify-reload): with the
    /// CLOCK_MONOTONIC time, so the manager can tell this reload from an older one.
    func reloading() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        send("RELOADING=1\nMONOTONIC_USEC=\(UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000)")
    }
    func watchdog() { send("WATCHDOG=1") }

    /// The listening socket passed by socket activation, if any. The variables
    /// are removed so that no child inherits them.
    static func listenSocket() -> Int32? {
        let environment = ProcessInfo.processInfo.environment
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pid = environment["LISTEN_PID"].flatMap(Int32.init), pid == getpid(),
              let count = environment["LISTEN_FDS"].flatMap(Int.init), count >= 1
        else { return nil }
        let fd: Int32 = 3
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }
}
