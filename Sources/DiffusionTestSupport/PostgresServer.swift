import DiffusionKernels
import Foundation

/// A private PostgreSQL server for the tests and `make bench`: `initdb` into a temporary
/// directory and `pg_ctl start`, as the `postgres` user when the tests run as
/// root (PostgreSQL refuses root), on a Unix socket in that directory and a TCP
/// port on 127.0.0.1. One server serves the whole test run, each test its own
/// database; it is stopped when the test process exits.
public final class PostgresServer: @unchecked Sendable {
    /// Debian's server binaries (`make test` installs `postgresql` where missing).
    public static let binaries: String? = {
        let base = "/usr/lib/postgresql"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
        let newest = names.compactMap { Int($0) }.max()
        guard let newest, FileManager.default.fileExists(atPath: "\(base)/\(newest)/bin/initdb") else { return nil }
        return "\(base)/\(newest)/bin"
    }()

    public static var available: Bool { binaries != nil }

    /// The run's server, started on first use.
    public static let shared: Result<PostgresServer, Error> = Result {
        let server = try PostgresServer()
        atexit { if case .success(let server) = PostgresServer.shared { server.destroy() } }
        return server
    }

    public let root: String
    public private(set) var port: Int
    private let lock = NSLock()
    private var databases = 0

    /// Addresses it listens on, and clients it lets in beyond the local ones (CIDR).
    let listen: String
    let allow: String?

    /// A server of its own (a test that restarts it, or hosts in network
    /// namespaces reach over `allow`); `shared` serves the rest.
    public init(listen: String = "127.0.0.1", allow: String? = nil) throws {
        self.listen = listen
        self.allow = allow
        guard let binaries = Self.binaries else { throw DiffusionError("no PostgreSQL server binaries in /usr/lib/postgresql") }
        root = "/tmp/dfn-pg-\(UUID().uuidString.prefix(8))"
        port = Int.random(in: 20_000..<40_000)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        if geteuid() == 0, let postgres = getpwnam("postgres") { chown(root, postgres.pointee.pw_uid, postgres.pointee.pw_gid) }
        guard Self.asServerUser("\(binaries)/initdb", ["-D", "\(root)/data", "-U", "postgres", "--auth=trust", "-E", "UTF8"]) == 0 else {
            throw DiffusionError("initdb into \(root)/data failed")
        }
        if let allow {
            let hba = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(root)/data/pg_hba.conf"))
            hba.seekToEndOfFile()
            hba.write(Data("host all all \(allow) trust\n".utf8))
            try hba.close()
        }
        // A random port may be taken: two more tries on others.
        for attempt in 1...3 {
            do {
                try start()
                return
            } catch where attempt < 3 {
                port = Int.random(in: 20_000..<40_000)
            }
        }
    }

    var binaries: String { Self.binaries! }

    /// `pg_ctl start`, waiting until it accepts connections.
    public func start() throws {
        let options = "-k \(root) -p \(port) -h \(listen) -c fsync=off -c max_connections=200"
        let status = Self.asServerUser("\(binaries)/pg_ctl", ["-D", "\(root)/data", "-l", "\(root)/server.log", "-o", options, "-w", "start"])
        guard status == 0 else {
            throw DiffusionError("pg_ctl start failed: \((try? String(contentsOfFile: "\(root)/server.log", encoding: .utf8)) ?? "")")
        }
    }

    /// `pg_ctl stop -m fast`: connections are cut, as a server restart cuts them.
    public func stop() {
        _ = Self.asServerUser("\(binaries)/pg_ctl", ["-D", "\(root)/data", "-m", "fast", "-w", "stop"])
    }

    /// Stops the server and removes its directory.
    public func destroy() {
        stop()
        // Not FileManager: this also runs from atexit, after Foundation's teardown has begun.
        _ = Self.spawn(["/bin/rm", "-rf", root])
    }

    public func restart() throws {
        stop()
        try start()
    }

    /// `signal` to the server and every backend it forked: SIGSTOP makes a
    /// server that keeps its connections open (the kernel still acknowledges
    /// what clients send) and answers nothing; SIGCONT thaws it.
    public func signalEveryProcess(_ signal: Int32) throws {
        let pidFile = try String(contentsOfFile: "\(root)/data/postmaster.pid", encoding: .utf8)
        guard let first = pidFile.split(separator: "\n").first, let postmaster = pid_t(first) else {
            throw DiffusionError("no server pid in \(root)/data/postmaster.pid")
        }
        var pids = [postmaster]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")")
            else { continue }
            // After "pid (name) state ": the parent's pid.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, pid_t(fields[1]) == postmaster { pids.append(pid) }
        }
        for pid in pids { kill(pid, signal) }
    }

    /// A fresh, empty database; its libpq URL over the Unix socket.
    public func createDatabase() throws -> String { url(try newDatabase()) }

    /// A fresh, empty database's name.
    public func newDatabase() throws -> String {
        let name = lock.withLock { () -> String in
            databases += 1
            return "t\(getpid())_\(databases)"
        }
        guard Self.spawn(["\(binaries)/psql", "-h", root, "-p", "\(port)", "-U", "postgres", "-d", "postgres", "-q", "-c",
                          "CREATE DATABASE \(name)"]) == 0
        else { throw DiffusionError("CREATE DATABASE \(name) failed on the server in \(root)") }
        return name
    }

    public func url(_ database: String) -> String { "postgresql:///\(database)?host=\(root)&port=\(port)&user=postgres" }

    /// The database over TCP at `address` (one of `listen`).
    public func url(_ database: String, address: String) -> String { "postgresql://postgres@\(address):\(port)/\(database)" }

    /// Runs a server program as `postgres` when this process is root; its exit
    /// status. Through posix_spawn and waitpid, output to /dev/null (the
    /// server's log is server.log): the server pg_ctl starts keeps the
    /// descriptors it was given, and Foundation's Process waited on it forever.
    private static func asServerUser(_ program: String, _ arguments: [String]) -> Int32 {
        spawn(geteuid() == 0 ? ["/usr/sbin/runuser", "-u", "postgres", "--", program] + arguments : [program] + arguments)
    }

    private static func spawn(_ command: [String]) -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var argv = command.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        guard posix_spawn(&pid, command[0], &actions, nil, &argv, environ) == 0 else { return -1 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status
    }
}
