import CPostgres
import DiffusionKernels
import Foundation

/// One libpq connection to the shared queue (`[queue] backend = "postgresql"`),
/// used from one thread. libpq's statuses become `DiffusionError`s here and
/// nowhere else: a lost connection, a server shutting down, a serialization
/// failure are transient; an SQL error is the program's own and is not.
///
/// A statement is sent with libpq's asynchronous calls and its answer waited
/// for at most `answerSeconds`; a server that does not answer by then is
/// given up as lost. A lost server is dialled again after a backoff (0.5 s
/// doubling to 10 s); until a connection stands, every call fails at once with
/// "the queue database is unreachable". Once `reconnect(on:)` hands it the
/// daemon's loop, it dials there: libpq's connect state machine stepped
/// whenever its socket under a `uv_poll` is ready, so the loop never waits for
/// a connection, and waits for one answer only while a server answers.
final class PostgresDatabase: QueueDatabase {
    let url: String
    private let hostName: String
    private var connection: OpaquePointer?
    private var retryAt = 0.0
    private var backoff = 0.5
    private var lastFailure = ""
    private var lastChanges = 0
    private var translated: [String: String] = [:]
    /// A NOTIFY read while a statement's answer was (so the socket will not say so).
    private var notified = false
    /// Set by `reconnect(on:)`.
    private var loop: EventLoop?
    private var redial: LoopTimer?
    private var dial: Dial?
    /// Called after every (re)connection with the socket to watch for NOTIFY,
    /// before a connection is closed (its socket goes with it), and when a
    /// NOTIFY was read inside a statement (the caller's socket watch missed it).
    var onConnect: ((Int32) -> Void)?
    var onDisconnect: ((String) -> Void)?
    var onNotified: (() -> Void)?
    static let channel = "diffusiond_queue"
    /// The longest a statement waits for its answer, and a dial for a connection.
    static let answerSeconds = 5.0
    static let dialSeconds = 3.0

    init(url: String, hostName: String) throws {
        self.url = url
        self.hostName = hostName
        try connect()
    }

    deinit {
        PQfinish(connection)
        if let dial { PQfinish(dial.connection) }
    }

    var description: String { Self.redacted(url) }

    /// A URL without its password, for messages.
    static func redacted(_ url: String) -> String {
        url.replacingOccurrences(of: #":[^:@/]*@"#, with: ":***@", options: .regularExpression)
    }

    /// The connection's socket, to watch for notifications; nil while disconnected.
    var socket: Int32? {
        guard let connection, PQstatus(connection) == CONNECTION_OK else { return nil }
        let fd = PQsocket(connection)
        return fd >= 0 ? fd : nil
    }

    /// libpq's connection keywords: the URL, short network timeouts, our name in `pg_stat_activity`.
    private func withParameters<T>(_ body: (UnsafePointer<UnsafePointer<CChar>?>, UnsafePointer<UnsafePointer<CChar>?>) -> T) -> T {
        let keys = ["dbname", "connect_timeout", "tcp_user_timeout", "keepalives_idle", "keepalives_interval",
                    "keepalives_count", "application_name"]
        let values = [url, "\(Int(Self.dialSeconds))", "3000", "5", "2", "2", "diffusiond \(hostName)"]
        let keyPointers = keys.map { strdup($0) } + [nil]
        let valuePointers = values.map { strdup($0) } + [nil]
        defer { (keyPointers + valuePointers).forEach { free($0) } }
        return keyPointers.map { UnsafePointer($0) }.withUnsafeBufferPointer { keyBuffer in
            valuePointers.map { UnsafePointer($0) }.withUnsafeBufferPointer { valueBuffer in
                body(keyBuffer.baseAddress!, valueBuffer.baseAddress!)
            }
        }
    }

    /// Dials and waits (at start-up, and on threads other than the loop's).
    private func connect() throws {
        let attempt = withParameters { PQconnectdbParams($0, $1, 1) }
        guard let attempt, PQstatus(attempt) == CONNECTION_OK else {
            let message = attempt.map { Self.firstLine(PQerrorMessage($0)) } ?? "out of memory"
            PQfinish(attempt)
            throw unreachable(message)
        }
        try adopt(attempt)
    }

    /// A connection made: set up for statements and notifications.
    private func adopt(_ made: OpaquePointer) throws {
        connection = made
        backoff = 0.5
        translated = [:]
        PQsetnonblocking(made, 1)
        _ = try run("SET statement_timeout = '30s'; SET client_min_messages = warning", [])
        _ = try run("LISTEN \(Self.channel)", [])
        if let fd = socket { onConnect?(fd) }
    }

    /// From now on a lost server is dialled on `loop`, as soon as the backoff
    /// has passed, without the loop waiting for it.
    func reconnect(on loop: EventLoop) {
        self.loop = loop
        redial = LoopTimer(loop) { [unowned self] in startDialling() }
        if connection == nil { redial?.start(after: UInt64(max(retryAt - JobStore.now(), 0) * 1000)) }
    }

    /// A connection being made on the loop: its state machine, the socket it
    /// waits on (which libpq may replace from one step to the next), and the
    /// timer that gives it up.
    private final class Dial {
        let connection: OpaquePointer
        let deadline: LoopTimer
        var poll: LoopPoll?
        init(connection: OpaquePointer, deadline: LoopTimer) { (self.connection, self.deadline) = (connection, deadline) }
    }

    private func startDialling() {
        guard let loop, connection == nil, dial == nil else { return }
        let attempt = withParameters { PQconnectStartParams($0, $1, 1) }
        guard let attempt, PQstatus(attempt) != CONNECTION_BAD else {
            let message = attempt.map { Self.firstLine(PQerrorMessage($0)) } ?? "out of memory"
            PQfinish(attempt)
            _ = unreachable(message)
            return
        }
        let deadline = LoopTimer(loop) { [unowned self] in dialFailed("no connection within \(Int(Self.dialSeconds)) s") }
        deadline.start(after: UInt64(Self.dialSeconds * 1000))
        dial = Dial(connection: attempt, deadline: deadline)
        // libpq's protocol: before the first PQconnectPoll, wait as if it had said "writing".
        wait(for: PGRES_POLLING_WRITING)
    }

    /// The dial's next step: watch its socket for what libpq waits on, or finish.
    private func wait(for status: PostgresPollingStatusType) {
        guard let loop, let current = dial else { return }
        switch status {
        case PGRES_POLLING_OK:
            current.poll?.close()
            current.deadline.close()
            dial = nil
            lastFailure = ""
            // A setup statement that fails has counted as the connection's loss already.
            try? adopt(current.connection)
        case PGRES_POLLING_READING, PGRES_POLLING_WRITING:
            let fd = PQsocket(current.connection)
            let writable = status == PGRES_POLLING_WRITING
            do {
                if let poll = current.poll, poll.fd == fd {
                    try poll.watch(writable: writable)
                } else {
                    current.poll?.close()
                    current.poll = try LoopPoll(loop, fd: fd, writable: writable) { [unowned self] in
                        guard let dial else { return }
                        // Stopped while libpq may close this socket and open another.
                        dial.poll?.stop()
                        wait(for: PQconnectPoll(dial.connection))
                    }
                }
            } catch {
                dialFailed("\(error)")
            }
        default:
            dialFailed(Self.firstLine(PQerrorMessage(current.connection)))
        }
    }

    private func dialFailed(_ message: String) {
        guard let current = dial else { return }
        dial = nil
        current.poll?.close()
        current.deadline.close()
        PQfinish(current.connection)
        _ = unreachable(message)
    }

    /// The server went away: drop the connection and wait out the backoff.
    private func unreachable(_ message: String) -> DiffusionError {
        if connection != nil { onDisconnect?(message) }
        PQfinish(connection)
        connection = nil
        lastFailure = message
        retryAt = JobStore.now() + backoff
        redial?.start(after: UInt64(backoff * 1000))
        backoff = min(backoff * 2, 10)
        return DiffusionError("the queue database \(description) is unreachable: \(message)", transient: true)
    }

    private func connected() throws -> OpaquePointer {
        if let connection, PQstatus(connection) == CONNECTION_OK { return connection }
        if connection != nil { throw unreachable("the connection was lost") }
        guard loop == nil, JobStore.now() >= retryAt else {
            let when = dial != nil ? "connecting" : "trying again in \(max(Int((retryAt - JobStore.now()).rounded(.up)), 1)) s"
            throw DiffusionError("the queue database \(description) is unreachable: \(lastFailure) (\(when))", transient: true)
        }
        try connect()
        return connection!
    }

    @discardableResult
    func query(_ sql: String, _ arguments: [DatabaseValue]) throws -> [DatabaseRow] {
        let text = translated[sql] ?? Self.numberPlaceholders(sql)
        translated[sql] = text
        return try run(text, arguments)
    }

    private func run(_ sql: String, _ arguments: [DatabaseValue]) throws -> [DatabaseRow] {
        let connection = try connected()
        // Every value is sent typed (int8, float8, text, bytea), so PostgreSQL
        // never has to guess a parameter's type from where it stands.
        var types: [Oid] = []
        var formats: [Int32] = []
        var buffers: [Data?] = []
        for argument in arguments {
            let (type, format, bytes): (Oid, Int32, Data?)
            switch argument {
            case .null: (type, format, bytes) = (0, 0, nil)
            case .integer(let value): (type, format, bytes) = (20, 0, Data("\(value)\0".utf8))
            case .real(let value): (type, format, bytes) = (701, 0, Data("\(value)\0".utf8))
            case .text(let value): (type, format, bytes) = (25, 0, Data((value + "\0").utf8))
            case .blob(let value): (type, format, bytes) = (17, 1, value)
            }
            types.append(type)
            formats.append(format)
            buffers.append(bytes)
        }
        let lengths = buffers.map { Int32($0?.count ?? 0) }
        let pointers = buffers.map { data -> UnsafeMutablePointer<CChar>? in
            guard let data else { return nil }
            let copy = UnsafeMutablePointer<CChar>.allocate(capacity: max(data.count, 1))
            data.withUnsafeBytes { bytes in if let base = bytes.baseAddress { memcpy(copy, base, bytes.count) } }
            return copy
        }
        defer { pointers.forEach { $0?.deallocate() } }
        // Without arguments, the simple protocol, which takes several statements (the migrations).
        let sent = arguments.isEmpty ? PQsendQuery(connection, sql) : pointers.map { $0.map { UnsafePointer($0) } }.withUnsafeBufferPointer {
            PQsendQueryParams(connection, sql, Int32(arguments.count), types, $0.baseAddress, lengths, formats, 0)
        }
        guard sent == 1 else { throw unreachable(Self.firstLine(PQerrorMessage(connection))) }
        let result = try answer(connection)
        defer { PQclear(result) }
        let status = PQresultStatus(result)
        guard status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK else {
            if PQstatus(connection) != CONNECTION_OK || result == nil {
                throw unreachable(Self.firstLine(PQerrorMessage(connection)))
            }
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) } ?? ""
            // 08: connection, 40: serialization/deadlock, 53: resources, 57: shutdown or cancel.
            let transient = ["08", "40", "53", "57"].contains(String(state.prefix(2)))
            throw DiffusionError("the queue database \(description): \(Self.firstLine(PQresultErrorMessage(result)))",
                                 transient: transient)
        }
        lastChanges = Int(String(cString: PQcmdTuples(result))) ?? 0
        return (0..<PQntuples(result)).map { row in
            DatabaseRow(values: (0..<PQnfields(result)).map { column in
                guard PQgetisnull(result, row, column) == 0 else { return .null }
                let text = String(cString: PQgetvalue(result, row, column))
                switch PQftype(result, column) {
                case 20, 21, 23, 26: return Int64(text).map { .integer($0) } ?? .null
                case 16: return .integer(text == "t" ? 1 : 0)
                case 700, 701, 1700: return Double(text).map { .real($0) } ?? .null
                case 17: return .blob(Self.decodeHex(text))
                default: return .text(text)
                }
            })
        }
    }

    /// The answer to the statement just sent, as PQexec would give it (the
    /// first error, or else the last result), within `answerSeconds`.
    private func answer(_ connection: OpaquePointer) throws -> OpaquePointer? {
        let deadline = JobStore.now() + Self.answerSeconds
        let fd = PQsocket(connection)
        func ready(_ events: Int16) throws {
            var entry = pollfd(fd: fd, events: events, revents: 0)
            var ready: Int32
            repeat {
                ready = poll(&entry, 1, Int32(max((deadline - JobStore.now()) * 1000, 0)))
            } while ready < 0 && errno == EINTR
            guard ready > 0 else { throw unreachable("no answer within \(Int(Self.answerSeconds)) s") }
            if entry.revents & Int16(POLLIN) != 0, PQconsumeInput(connection) != 1 {
                throw unreachable(Self.firstLine(PQerrorMessage(connection)))
            }
        }
        // Nonblocking: the statement may not have left in one write.
        while true {
            let flushed = PQflush(connection)
            if flushed == 0 { break }
            if flushed < 0 { throw unreachable(Self.firstLine(PQerrorMessage(connection))) }
            try ready(Int16(POLLIN | POLLOUT))
        }
        var kept: OpaquePointer?
        while true {
            do {
                while PQisBusy(connection) == 1 { try ready(Int16(POLLIN)) }
            } catch {
                // The connection went while later results were due: the ones taken go with it.
                PQclear(kept)
                throw error
            }
            guard let result = PQgetResult(connection) else { break }
            if kept.map({ PQresultStatus($0) == PGRES_FATAL_ERROR }) == true {
                PQclear(result)
            } else {
                PQclear(kept)
                kept = result
            }
        }
        while let notice = PQnotifies(connection) {
            PQfreemem(notice)
            if !notified { onNotified?() }
            notified = true
        }
        return kept
    }

    var changes: Int { lastChanges }
    var cachedStatements: Int { translated.count }

    func write<T>(_ body: () throws -> T) throws -> T {
        _ = try run("BEGIN", [])
        do {
            let result = try body()
            _ = try run("COMMIT", [])
            return result
        } catch {
            if connection != nil { _ = try? run("ROLLBACK", []) }
            throw error
        }
    }

    /// Every host runs this at start: the advisory lock makes the second wait
    /// for the first, which it then finds has migrated already.
    func migrate() throws {
        try write {
            _ = try run("SELECT pg_advisory_xact_lock(7245001)", [])
            _ = try run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", [])
            let version = try run("SELECT version FROM schema_version", []).first?.int(0)
            if version == nil { _ = try run("INSERT INTO schema_version (version) VALUES (0)", []) }
            guard (version ?? 0) <= migrations.count else {
                throw DiffusionError("\(description): schema version \(version ?? 0) is newer than this program's \(migrations.count)")
            }
            for (index, migration) in migrations.enumerated().dropFirst(version ?? 0) {
                _ = try run(migration, [])
                _ = try run("UPDATE schema_version SET version = \(index + 1)", [])
            }
        }
    }

    /// Each entry migrates the schema from version `index` to `index + 1`.
    let migrations = [
        """
        CREATE TABLE jobs (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            state TEXT NOT NULL,
            owner_uid BIGINT NOT NULL,
            owner_name TEXT NOT NULL,
            priority BIGINT NOT NULL,
            job BYTEA NOT NULL,
            model TEXT NOT NULL,
            source TEXT NOT NULL,
            attempts BIGINT NOT NULL DEFAULT 0,
            max_attempts BIGINT NOT NULL,
            not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
            steps BIGINT NOT NULL,
            count BIGINT NOT NULL,
            step BIGINT NOT NULL DEFAULT 0,
            images_done BIGINT NOT NULL DEFAULT 0,
            error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            crashes BIGINT NOT NULL DEFAULT 0,
            lease_host TEXT,
            lease_token BIGINT,
            lease_expires DOUBLE PRECISION,
            cancel_requested BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX jobs_by_state ON jobs (state, priority DESC, id);
        CREATE INDEX jobs_by_owner ON jobs (owner_uid, id);
        CREATE TABLE events (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            job_id BIGINT,
            time DOUBLE PRECISION NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE INDEX events_by_job ON events (job_id, id);
        CREATE TABLE owner_turns (uid BIGINT PRIMARY KEY, turn BIGINT NOT NULL);
        CREATE SEQUENCE lease_tokens;
        CREATE TABLE checkpoints (job_id BIGINT PRIMARY KEY, lease_token BIGINT NOT NULL, data BYTEA NOT NULL);
        CREATE TABLE receipts (
            host TEXT NOT NULL,
            name TEXT NOT NULL,
            hash TEXT NOT NULL,
            job_id BIGINT NOT NULL,
            PRIMARY KEY (host, name, hash)
        );
        """,
    ]

    let isShared = true
    let claimLock = " FOR UPDATE SKIP LOCKED"
    let rowLock = " FOR UPDATE"
    let clock = "EXTRACT(EPOCH FROM clock_timestamp())::float8"

    func nextLeaseToken() throws -> Int { try run("SELECT nextval('lease_tokens')", []).first?.int(0) ?? 0 }

    func notifyQueueChanged() throws { _ = try run("NOTIFY \(Self.channel)", []) }

    /// Reads what the server sent; true when a host said the queue changed
    /// (now, or inside a statement since the last call). A connection found
    /// broken is dropped (and dialled again).
    func takeNotifications() -> Bool {
        var any = notified
        notified = false
        guard let connection else { return any }
        guard PQconsumeInput(connection) == 1 else {
            _ = unreachable(Self.firstLine(PQerrorMessage(connection)))
            return true  // the caller's next read finds out, and retries
        }
        while let notice = PQnotifies(connection) {
            any = true
            PQfreemem(notice)
        }
        return any
    }

    /// `?` placeholders as PostgreSQL's `$1, $2, ...` (the SQL has no `?` in a literal).
    static func numberPlaceholders(_ sql: String) -> String {
        var result = ""
        var number = 0
        for character in sql {
            if character == "?" {
                number += 1
                result += "$\(number)"
            } else {
                result.append(character)
            }
        }
        return result
    }

    private static func decodeHex(_ text: String) -> Data {
        let bytes = Array(text.utf8.dropFirst(2))  // "\x"
        var data = Data(capacity: bytes.count / 2)
        func nibble(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : (c | 0x20) - 87 }
        var index = 0
        while index + 1 < bytes.count {
            data.append(nibble(bytes[index]) << 4 | nibble(bytes[index + 1]))
            index += 2
        }
        return data
    }

    private static func firstLine(_ message: UnsafePointer<CChar>?) -> String {
        let text = message.map { String(cString: $0) } ?? ""
        return text.split(separator: "\n").first.map(String.init) ?? "no message"
    }
}
