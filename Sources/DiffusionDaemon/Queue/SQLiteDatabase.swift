import CSQLite
import DiffusionKernels
import Foundation

/// One SQLite connection, used from one thread. SQLite's status codes become
/// `DiffusionError`s here and nowhere else; they are transient (a busy or full
/// database, an I/O error: the work is tried again later, never thrown away).
final class SQLiteDatabase: QueueDatabase {
    private let handle: OpaquePointer
    private var statements: [String: OpaquePointer] = [:]
    let path: String

    init(path: String) throws {
        self.path = path
        // Every job's JSON (inline init_noise included) is in here: the daemon's
        // alone. SQLite gives its -wal and -shm files the same mode.
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if fd >= 0 {
            fchmod(fd, 0o600)
            close(fd)
        }
        var db: OpaquePointer?
        let status = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nil)
        guard status == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw DiffusionError("\(path): cannot open the database: \(message)", transient: true)
        }
        handle = db
        sqlite3_busy_timeout(db, 5000)
        sqlite3_extended_result_codes(db, 1)
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(handle)
    }

    /// Runs statements that take no arguments and return nothing (pragmas, DDL).
    func execute(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let status = sqlite3_exec(handle, sql, nil, nil, &message)
        if status != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(status))
            sqlite3_free(message)
            throw DiffusionError("\(path): \(text)", transient: true)
        }
    }

    /// Runs one statement with `arguments` bound to its `?`s and returns its rows.
    @discardableResult
    func query(_ sql: String, _ arguments: [DatabaseValue]) throws -> [DatabaseRow] {
        let statement = try prepared(sql)
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        for (index, argument) in arguments.enumerated() {
            let position = Int32(index + 1)
            let status: Int32
            switch argument {
            case .null: status = sqlite3_bind_null(statement, position)
            case .integer(let value): status = sqlite3_bind_int64(statement, position, value)
            case .real(let value): status = sqlite3_bind_double(statement, position, value)
            case .text(let value): status = sqlite3_bind_text(statement, position, value, -1, sqliteTransient)
            case .blob(let value):
                status = value.withUnsafeBytes { sqlite3_bind_blob64(statement, position, $0.baseAddress, UInt64($0.count), sqliteTransient) }
            }
            try check(status)
        }
        var rows: [DatabaseRow] = []
        while true {
            let status = sqlite3_step(statement)
            if status == SQLITE_DONE { break }
            guard status == SQLITE_ROW else { try check(status); break }
            let columns = sqlite3_column_count(statement)
            rows.append(DatabaseRow(values: (0..<columns).map { column in
                switch sqlite3_column_type(statement, column) {
                case SQLITE_INTEGER: return .integer(sqlite3_column_int64(statement, column))
                case SQLITE_FLOAT: return .real(sqlite3_column_double(statement, column))
                case SQLITE_TEXT: return .text(String(cString: sqlite3_column_text(statement, column)))
                case SQLITE_BLOB:
                    let count = Int(sqlite3_column_bytes(statement, column))
                    return .blob(count == 0 ? Data() : Data(bytes: sqlite3_column_blob(statement, column), count: count))
                default: return .null
                }
            }))
        }
        return rows
    }

    /// Prepared statements kept: one per distinct SQL text, which must be a
    /// fixed set (every value is bound, never spliced into the text).
    var cachedStatements: Int { statements.count }

    func integrityCheck() throws -> String {
        try query("PRAGMA integrity_check").first?.string(0) ?? "no answer"
    }

    var changes: Int { Int(sqlite3_changes(handle)) }

    /// `body` inside `BEGIN IMMEDIATE … COMMIT`, rolled back if it throws.
    @discardableResult
    func write<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    /// The file's schema version is `PRAGMA user_version`; BEGIN IMMEDIATE's
    /// write lock keeps a second process out while it migrates.
    func migrate() throws {
        try execute("PRAGMA journal_mode=WAL")
        try execute("PRAGMA synchronous=FULL")
        try execute("PRAGMA foreign_keys=ON")
        try write {
            let version = try query("PRAGMA user_version").first?.int(0) ?? 0
            guard version <= migrations.count else {
                throw DiffusionError("\(path): schema version \(version) is newer than this program's \(migrations.count)")
            }
            for (index, migration) in migrations.enumerated().dropFirst(version) {
                try execute(migration)
                try execute("PRAGMA user_version = \(index + 1)")
            }
        }
    }

    /// Each entry migrates the schema from version `index` to `index + 1`.
    let migrations = [
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            state TEXT NOT NULL,
            owner_uid INTEGER NOT NULL,
            owner_name TEXT NOT NULL,
            priority INTEGER NOT NULL,
            job BLOB NOT NULL,
            model TEXT NOT NULL,
            source TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            not_before REAL NOT NULL DEFAULT 0,
            steps INTEGER NOT NULL,
            count INTEGER NOT NULL,
            step INTEGER NOT NULL DEFAULT 0,
            images_done INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        );
        CREATE INDEX jobs_by_state ON jobs (state, priority DESC, id);
        CREATE INDEX jobs_by_owner ON jobs (owner_uid, id);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            job_id INTEGER,
            time REAL NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE INDEX events_by_job ON events (job_id, id);
        CREATE TABLE owner_turns (uid INTEGER PRIMARY KEY, turn INTEGER NOT NULL);
        CREATE TABLE spool_receipts (
            name TEXT NOT NULL,
            hash TEXT NOT NULL,
            job_id INTEGER NOT NULL,
            PRIMARY KEY (name, hash)
        );
        """,
        // Unclean daemon exits in a row while the job ran (the dead-letter count).
        "ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;",
        // Leases and fencing tokens (docs/cluster.md), the columns PostgreSQL's
        // schema has, so that one JobStore speaks to both. Receipts name the
        // host whose spool they are of; those from before carry ''.
        """
        ALTER TABLE jobs ADD COLUMN lease_host TEXT;
        ALTER TABLE jobs ADD COLUMN lease_token INTEGER;
        ALTER TABLE jobs ADD COLUMN lease_expires REAL;
        ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE lease_tokens (last INTEGER NOT NULL);
        INSERT INTO lease_tokens (last) VALUES (0);
        CREATE TABLE checkpoints (job_id INTEGER PRIMARY KEY, lease_token INTEGER NOT NULL, data BLOB NOT NULL);
        CREATE TABLE receipts (
            host TEXT NOT NULL,
            name TEXT NOT NULL,
            hash TEXT NOT NULL,
            job_id INTEGER NOT NULL,
            PRIMARY KEY (host, name, hash)
        );
        INSERT INTO receipts (host, name, hash, job_id) SELECT '', name, hash, job_id FROM spool_receipts;
        DROP TABLE spool_receipts;
        """,
    ]

    /// One host per file (the state directory's lock).
    let isShared = false
    let claimLock = ""
    let rowLock = ""
    let clock = "((julianday('now') - 2440587.5) * 86400.0)"
    /// One host: the loop that wrote is the one that dispatches.
    func notifyQueueChanged() {}
    var description: String { path }

    /// The next fencing token; inside a write.
    func nextLeaseToken() throws -> Int {
        try query("UPDATE lease_tokens SET last = last + 1 RETURNING last").first?.int(0) ?? 0
    }

    private func prepared(_ sql: String) throws -> OpaquePointer {
        if let statement = statements[sql] { return statement }
        var statement: OpaquePointer?
        try check(sqlite3_prepare_v2(handle, sql, -1, &statement, nil))
        statements[sql] = statement!
        return statement!
    }

    private func check(_ status: Int32) throws {
        guard status == SQLITE_OK || status == SQLITE_ROW || status == SQLITE_DONE else {
            let reason = (status & 0xFF) == SQLITE_FULL ? "the disk is full" : String(cString: sqlite3_errmsg(handle))
            throw DiffusionError("\(path): \(reason)", transient: true, errno: (status & 0xFF) == SQLITE_FULL ? ENOSPC : nil)
        }
    }
}

/// SQLITE_TRANSIENT: SQLite copies the bound bytes before the call returns.
private let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
