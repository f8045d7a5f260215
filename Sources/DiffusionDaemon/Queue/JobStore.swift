import DiffusionKernels
import Foundation

// The job queue, in SQLite (WAL, synchronous=FULL, every write in BEGIN IMMEDIATE).
//
// Job states and who moves a job between them:
//
//   from       to         when
//   (new)      queued     submitted over the socket or picked up from the spool
//   queued     running    the scheduler hands it to the worker
//   queued     held       hold (owner or root)
//   queued     canceled   cancel
//   held       queued     release
//   held       canceled   cancel
//   running    succeeded  the worker wrote every output
//   running    queued     a retryable failure with attempts left (after a backoff),
//                         SIGTERM, or a daemon restart after a crash; only a
//                         failure consumes an attempt
//   running    failed     a permanent failure, or the last attempt failed, or
//                         (at start-up) the job was running at the last
//                         `poison_after_crashes` unclean exits in a row: a job
//                         that crashes the daemon is not run again by itself
//   running    canceled   cancel (takes effect at the next step)
//   failed     queued     retry (attempts start again from 0)
//   canceled   queued     retry
//
// The next job to run: the highest priority; among equals, the owner whose last
// turn is longest ago (fair turns between owners); then the oldest. Every state
// change appends a row to `events` with its time and reason. Finished jobs are
// pruned past `keep_jobs` or `keep_days`, with their events.

/// One row of the queue.
struct JobRecord {
    enum State: String, CaseIterable {
        case queued, held, running, succeeded, failed, canceled
        var isFinished: Bool { self == .succeeded || self == .failed || self == .canceled }
    }

    var id: Int
    var state: State
    var ownerUID: Int
    var ownerName: String
    var priority: Int
    /// The job as accepted (docs/jobs.md), with init_noise inline.
    var job: Data
    /// The job's model name (kept beside the JSON, which may hold megabytes of init_noise).
    var model: String
    var source: String
    var attempts: Int
    var maxAttempts: Int
    var notBefore: Double
    var steps: Int
    var count: Int
    var step: Int
    var imagesDone: Int
    var error: String?
    var createdAt: Double
    var startedAt: Double?
    var finishedAt: Double?

    static let columns = """
        id, state, owner_uid, owner_name, priority, job, source, attempts, max_attempts, not_before, steps, count,
        step, images_done, error, created_at, started_at, finished_at, model
        """

    init(row: SQLiteDatabase.Row) {
        id = row.int(0)
        state = State(rawValue: row.string(1) ?? "") ?? .failed
        ownerUID = row.int(2)
        ownerName = row.string(3) ?? ""
        priority = row.int(4)
        job = row.data(5) ?? Data()
        source = row.string(6) ?? ""
        attempts = row.int(7)
        maxAttempts = row.int(8)
        notBefore = row.double(9) ?? 0
        steps = row.int(10)
        count = row.int(11)
        step = row.int(12)
        imagesDone = row.int(13)
        error = row.string(14)
        createdAt = row.double(15) ?? 0
        startedAt = row.double(16)
        finishedAt = row.double(17)
        model = row.string(18) ?? ""
    }
}

struct JobEvent {
    let jobID: Int?
    let time: Double
    let state: String
    let reason: String
}

final class JobStore {
    private let db: SQLiteDatabase

    /// Each entry migrates the schema from version `index` to `index + 1`.
    private static let migrations: [String] = [
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
    ]

    static var schemaVersion: Int { migrations.count }

    init(path: String) throws {
        db = try SQLiteDatabase(path: path)
        try db.execute("PRAGMA journal_mode=WAL")
        try db.execute("PRAGMA synchronous=FULL")
        try db.execute("PRAGMA foreign_keys=ON")
        let version = try db.query("PRAGMA user_version").first?.int(0) ?? 0
        guard version <= Self.migrations.count else {
            throw DiffusionError("\(path): schema version \(version) is newer than this program's \(Self.migrations.count)")
        }
        for (index, migration) in Self.migrations.enumerated().dropFirst(version) {
            try db.write {
                try db.execute(migration)
                try db.execute("PRAGMA user_version = \(index + 1)")
            }
        }
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: Reading

    func record(_ id: Int) throws -> JobRecord? {
        try db.query("SELECT \(JobRecord.columns) FROM jobs WHERE id = ?", [.integer(Int64(id))]).first.map(JobRecord.init)
    }

    /// The newest jobs first, up to `limit` (nil: all).
    func list(states: [JobRecord.State], ownerUID: Int?, limit: Int?) throws -> [JobRecord] {
        var conditions: [String] = []
        var arguments: [SQLiteDatabase.Value] = []
        if !states.isEmpty {
            conditions.append("state IN (\(states.map { _ in "?" }.joined(separator: ",")))")
            arguments += states.map { .text($0.rawValue) }
        }
        if let ownerUID {
            conditions.append("owner_uid = ?")
            arguments.append(.integer(Int64(ownerUID)))
        }
        let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        // LIMIT is bound like every value (-1: none), so the statement cache holds
        // one statement per filter shape, whatever limits clients send.
        let sql = "SELECT \(JobRecord.columns) FROM jobs \(filter) ORDER BY id DESC LIMIT ?"
        return try db.query(sql, arguments + [.integer(Int64(limit ?? -1))]).map(JobRecord.init)
    }

    func events(of id: Int) throws -> [JobEvent] {
        try db.query("SELECT job_id, time, state, reason FROM events WHERE job_id = ? ORDER BY id", [.integer(Int64(id))]).map {
            JobEvent(jobID: $0.int(0), time: $0.double(1) ?? 0, state: $0.string(2) ?? "", reason: $0.string(3) ?? "")
        }
    }

    func countsByState() throws -> [JobRecord.State: Int] {
        var counts: [JobRecord.State: Int] = [:]
        for row in try db.query("SELECT state, COUNT(*) FROM jobs GROUP BY state") {
            if let state = JobRecord.State(rawValue: row.string(0) ?? "") { counts[state] = row.int(1) }
        }
        return counts
    }

    /// The job the worker should take next, if one may start at `now`.
    func nextRunnable(now: Double) throws -> JobRecord? {
        try db.query("""
            SELECT \(JobRecord.columns) FROM jobs
            WHERE state = 'queued' AND not_before <= ?
            ORDER BY priority DESC,
                     COALESCE((SELECT turn FROM owner_turns WHERE uid = jobs.owner_uid), 0),
                     id
            LIMIT 1
            """, [.real(now)]).first.map(JobRecord.init)
    }

    /// When the earliest queued job waiting out a retry backoff may start.
    func earliestBackoff(after now: Double) throws -> Double? {
        try db.query("SELECT MIN(not_before) FROM jobs WHERE state = 'queued' AND not_before > ?", [.real(now)]).first?.double(0)
    }

    // MARK: Writing

    /// Inserts a queued job; with a spool `receipt` (file name, content hash), in
    /// the same transaction, so that a crash before the file is unlinked is seen.
    func insert(job: Data, model: String, steps: Int, count: Int, priority: Int, owner: Owner, source: String, maxAttempts: Int,
                receipt: (name: String, hash: String)? = nil) throws -> JobRecord
    {
        let now = Self.now()
        let id: Int = try db.write {
            try db.query("""
                INSERT INTO jobs (state, owner_uid, owner_name, priority, job, model, source, max_attempts, steps, count, created_at)
                VALUES ('queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, [.integer(Int64(owner.uid)), .text(owner.name), .integer(Int64(priority)), .blob(job), .text(model), .text(source),
                      .integer(Int64(maxAttempts)), .integer(Int64(steps)), .integer(Int64(count)), .real(now)])
            let id = db.lastInsertID
            try appendEvent(id, .queued, "submitted by \(owner.name) (uid \(owner.uid)) via \(source)", now)
            if let receipt {
                try db.query("INSERT INTO spool_receipts (name, hash, job_id) VALUES (?, ?, ?)",
                             [.text(receipt.name), .text(receipt.hash), .integer(Int64(id))])
            }
            return id
        }
        return try record(id)!
    }

    /// Moves `id` from one of `from` to `to`; false if it was in no state of `from`.
    @discardableResult
    func transition(_ id: Int, from: [JobRecord.State], to: JobRecord.State, reason: String,
                    error: String? = nil, resetAttempts: Bool = false) throws -> Bool
    {
        let now = Self.now()
        return try db.write {
            var sets = ["state = ?"]
            var arguments: [SQLiteDatabase.Value] = [.text(to.rawValue)]
            switch to {
            case .running:
                sets.append("started_at = ?")
                arguments.append(.real(now))
            case .succeeded, .failed, .canceled:
                sets += ["finished_at = ?", "error = ?"]
                arguments += [.real(now), error.map { .text($0) } ?? .null]
                if to == .succeeded { sets += ["step = steps", "images_done = count"] }
            case .queued:
                // A job handed back by a clean stop has not crashed anything.
                sets += ["finished_at = NULL", "not_before = 0", "crashes = 0"]
                if resetAttempts { sets += ["attempts = 0", "error = NULL", "step = 0", "images_done = 0"] }
            case .held:
                break
            }
            try db.query("UPDATE jobs SET \(sets.joined(separator: ", ")) WHERE id = ? AND state IN (\(from.map { _ in "?" }.joined(separator: ",")))",
                         arguments + [.integer(Int64(id))] + from.map { .text($0.rawValue) })
            guard db.changes == 1 else { return false }
            if to == .running {
                try db.query("""
                    INSERT INTO owner_turns (uid, turn) SELECT owner_uid, (SELECT COALESCE(MAX(turn), 0) + 1 FROM owner_turns)
                    FROM jobs WHERE id = ? ON CONFLICT (uid) DO UPDATE SET turn = excluded.turn
                    """, [.integer(Int64(id))])
            }
            try appendEvent(id, to, reason, now)
            return true
        }
    }

    /// A running job's failure: queued again after a backoff while attempts remain
    /// and the failure is retryable, failed otherwise. Returns the new state.
    func fail(_ id: Int, error: String, retryable: Bool, backoffSeconds: Double) throws -> JobRecord.State {
        let now = Self.now()
        return try db.write {
            guard let job = try record(id), job.state == .running else { return .failed }
            let attempts = job.attempts + 1
            if retryable && attempts < job.maxAttempts {
                let delay = backoffSeconds * pow(2, Double(attempts - 1))
                try db.query("UPDATE jobs SET state = 'queued', attempts = ?, error = ?, not_before = ? WHERE id = ?",
                             [.integer(Int64(attempts)), .text(error), .real(now + delay), .integer(Int64(id))])
                try appendEvent(id, .queued, "attempt \(attempts) of \(job.maxAttempts) failed, retrying in \(Int(delay)) s: \(error)", now)
                return .queued
            }
            try db.query("UPDATE jobs SET state = 'failed', attempts = ?, error = ?, finished_at = ? WHERE id = ?",
                         [.integer(Int64(attempts)), .text(error), .real(now), .integer(Int64(id))])
            try appendEvent(id, .failed, error, now)
            return .failed
        }
    }

    /// An event that records something about a job without changing its state.
    func appendNote(_ id: Int, _ reason: String) throws {
        try db.write { try insertNote(id, reason) }
    }

    private func insertNote(_ id: Int, _ reason: String) throws {
        try db.query("INSERT INTO events (job_id, time, state, reason) SELECT id, ?, state, ? FROM jobs WHERE id = ?",
                     [.real(Self.now()), .text(reason), .integer(Int64(id))])
    }

    func setPriority(_ id: Int, _ priority: Int, by who: String) throws {
        try db.write {
            try db.query("UPDATE jobs SET priority = ? WHERE id = ?", [.integer(Int64(priority)), .integer(Int64(id))])
            try insertNote(id, "priority set to \(priority) by \(who)")
        }
    }

    /// At start-up: jobs a previous daemon left running (it exited uncleanly)
    /// go back to the queue without consuming an attempt, unless this makes
    /// `poisonAfter` unclean exits in a row while they ran (0: never): those are
    /// failed, so a job that crashes the daemon cannot crash it forever.
    /// Returns the ids queued again and the ids failed.
    func requeueInterrupted(poisonAfter: Int) throws -> (queued: [Int], poisoned: [Int]) {
        let now = Self.now()
        return try db.write {
            var result: (queued: [Int], poisoned: [Int]) = ([], [])
            for row in try db.query("SELECT id, crashes FROM jobs WHERE state = 'running'") {
                let (id, crashes) = (row.int(0), row.int(1) + 1)
                if poisonAfter > 0 && crashes >= poisonAfter {
                    let reason = "the daemon exited uncleanly \(crashes) times in a row while this job ran, so it is not run again by itself (diffctl retry runs it again)"
                    try db.query("UPDATE jobs SET state = 'failed', crashes = ?, error = ?, finished_at = ? WHERE id = ?",
                                 [.integer(Int64(crashes)), .text(reason), .real(now), .integer(Int64(id))])
                    try appendEvent(id, .failed, reason, now)
                    result.poisoned.append(id)
                } else {
                    try db.query("UPDATE jobs SET state = 'queued', crashes = ?, not_before = 0 WHERE id = ?",
                                 [.integer(Int64(crashes)), .integer(Int64(id))])
                    try appendEvent(id, .queued, "the daemon stopped while it ran (unclean exit \(crashes)); queued again", now)
                    result.queued.append(id)
                }
            }
            return result
        }
    }

    /// An event with no job (a rejected spool file).
    func logEvent(_ state: String, _ reason: String) throws {
        try db.write {
            try db.query("INSERT INTO events (job_id, time, state, reason) VALUES (NULL, ?, ?, ?)",
                         [.real(Self.now()), .text(state), .text(reason)])
        }
    }

    private func appendEvent(_ id: Int, _ state: JobRecord.State, _ reason: String, _ time: Double) throws {
        try db.query("INSERT INTO events (job_id, time, state, reason) VALUES (?, ?, ?, ?)",
                     [.integer(Int64(id)), .real(time), .text(state.rawValue), .text(reason)])
    }

    /// Deletes finished jobs beyond the newest `keepJobs` or older than
    /// `keepDays`, with their events; returns their ids (their outputs go too).
    func prune(keepJobs: Int, keepDays: Double) throws -> [Int] {
        let cutoff = Self.now() - keepDays * 86400
        return try db.write {
            let ids = try db.query("""
                SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'canceled')
                AND (finished_at < ? OR id NOT IN (
                    SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'canceled') ORDER BY id DESC LIMIT ?))
                """, [.real(cutoff), .integer(Int64(keepJobs))]).map { $0.int(0) }
            for id in ids {
                try db.query("DELETE FROM events WHERE job_id = ?", [.integer(Int64(id))])
                try db.query("DELETE FROM jobs WHERE id = ?", [.integer(Int64(id))])
            }
            try db.query("DELETE FROM events WHERE job_id IS NULL AND time < ?", [.real(cutoff)])
            return ids
        }
    }

    // MARK: Spool receipts

    func receipt(name: String, hash: String) throws -> Int? {
        try db.query("SELECT job_id FROM spool_receipts WHERE name = ? AND hash = ?", [.text(name), .text(hash)]).first?.int(0)
    }

    func dropReceipt(name: String, hash: String) throws {
        try db.write { try db.query("DELETE FROM spool_receipts WHERE name = ? AND hash = ?", [.text(name), .text(hash)]) }
    }

    /// Receipts of files no longer in the spool (the daemon stopped between
    /// unlinking a file and dropping its receipt).
    func dropReceipts(keeping names: Set<String>) throws {
        let stale = try db.query("SELECT name, hash FROM spool_receipts").compactMap { row -> (String, String)? in
            guard let name = row.string(0), let hash = row.string(1), !names.contains(name) else { return nil }
            return (name, hash)
        }
        for (name, hash) in stale { try dropReceipt(name: name, hash: hash) }
    }

    var cachedStatements: Int { db.cachedStatements }

    func integrityCheck() throws -> String {
        try db.query("PRAGMA integrity_check").first?.string(0) ?? "no answer"
    }
}

/// Who a job belongs to: the uid from SO_PEERCRED or the spool file's owner.
struct Owner: Equatable {
    let uid: Int
    let name: String

    init(uid: Int) {
        self.uid = uid
        name = Owner.userName(uid) ?? String(uid)
    }

    /// The user's primary group, which their outputs are given to.
    static func primaryGroup(_ uid: uid_t) -> gid_t? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, let result else { return nil }
        return result.pointee.pw_gid
    }

    /// Whether user `uid` belongs to group `name` (as primary or supplementary group).
    static func isMember(uid: Int, of name: String) -> Bool {
        guard let user = userName(uid), let base = primaryGroup(uid_t(uid)) else { return false }
        var entry = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 16384)
        guard getgrnam_r(name, &entry, &buffer, buffer.count, &result) == 0, let result else { return false }
        let wanted = result.pointee.gr_gid
        var count: Int32 = 256
        var groups = [gid_t](repeating: 0, count: Int(count))
        guard getgrouplist(user, base, &groups, &count) >= 0 else { return false }
        return groups.prefix(Int(count)).contains(wanted)
    }

    static func userName(_ uid: Int) -> String? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid_t(uid), &entry, &buffer, buffer.count, &result) == 0, let result else { return nil }
        return String(cString: result.pointee.pw_name)
    }

    static func uid(named name: String) -> Int? {
        if let number = Int(name) { return number }
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwnam_r(name, &entry, &buffer, buffer.count, &result) == 0, let result else { return nil }
        return Int(result.pointee.pw_uid)
    }
}

/// SQLite's `PRAGMA integrity_check` of a queue file ("ok" when sound), for tools.
public enum JobStoreCheck {
    public static func integrity(of path: String) throws -> String { try JobStore(path: path).integrityCheck() }
}
