import DiffusionKernels
import Foundation

// The job queue: SQLite (WAL, synchronous=FULL, every write in BEGIN IMMEDIATE)
// on one host, or PostgreSQL shared by many (docs/cluster.md); the same SQL and
// the same rules on both, through `QueueDatabase`.
//
// Job states and who moves a job between them:
//
//   from       to         when
//   (new)      queued     submitted over the socket or picked up from the spool
//   queued     running    a host claims it: a lease with a fencing token
//   queued     held       hold (owner or root)
//   queued     canceled   cancel
//   held       queued     release
//   held       canceled   cancel
//   running    succeeded  the worker wrote every output
//   running    queued     a retryable failure with attempts left (after a backoff),
//                         SIGTERM, a daemon restart after a crash, or its lease
//                         expired (the host died, hung or lost the database);
//                         only a failure consumes an attempt
//   running    failed     a permanent failure, or the last attempt failed, or
//                         (at start-up) the job was running at the last
//                         `poison_after_crashes` unclean exits in a row: a job
//                         that crashes the daemon is not run again by itself
//   running    canceled   cancel (takes effect at the next step, on whichever
//                         host runs it)
//   failed     queued     retry (attempts start again from 0)
//   canceled   queued     retry
//
// The next job to run: the highest priority; among equals, the owner whose last
// turn is longest ago (fair turns between owners); then the oldest. Every state
// change appends a row to `events` with its time and reason. Finished jobs are
// pruned past `keep_jobs` or `keep_days`, with their events.
//
// Fencing: a claim gives the job the next token of one sequence, and every
// write about a running job (its end, its checkpoint, its renewal) names the
// token and changes nothing unless the job still holds it. A host whose lease
// expired, and the job claimed again, can no longer say anything about it.

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
    /// The host holding the job's lease (while running; kept after, for the record).
    var leaseHost: String?
    var leaseToken: Int?

    static let columns = """
        id, state, owner_uid, owner_name, priority, job, source, attempts, max_attempts, not_before, steps, count,
        step, images_done, error, created_at, started_at, finished_at, model, lease_host, lease_token
        """

    init(row: DatabaseRow) {
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
        leaseHost = row.string(19)
        leaseToken = row.optionalInt(20)
    }
}

struct JobEvent {
    let jobID: Int?
    let time: Double
    let state: String
    let reason: String
}

/// A claimed job's lease, as the running host knows it.
struct Lease: Equatable {
    let id: Int
    let token: Int
}

final class JobStore {
    let db: QueueDatabase
    /// This host's name in leases and receipts.
    let hostName: String
    /// How long a claim lasts unless renewed.
    let leaseSeconds: Double

    init(database: QueueDatabase, hostName: String, leaseSeconds: Double) throws {
        db = database
        self.hostName = hostName
        self.leaseSeconds = leaseSeconds
        try db.migrate()
    }

    /// The single-host queue file.
    convenience init(path: String, hostName: String = ProcessInfo.processInfo.hostName, leaseSeconds: Double = 30) throws {
        try self.init(database: try SQLiteDatabase(path: path), hostName: hostName, leaseSeconds: leaseSeconds)
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: Reading

    func record(_ id: Int) throws -> JobRecord? {
        try db.query("SELECT \(JobRecord.columns) FROM jobs WHERE id = ?", [.integer(Int64(id))]).first.map(JobRecord.init)
    }

    /// The newest jobs first, up to `limit` (nil: all).
    func list(states: [JobRecord.State], ownerUID: Int?, limit: Int?) throws -> [JobRecord] {
        var conditions: [String] = []
        var arguments: [DatabaseValue] = []
        if !states.isEmpty {
            conditions.append("state IN (\(states.map { _ in "?" }.joined(separator: ",")))")
            arguments += states.map { .text($0.rawValue) }
        }
        if let ownerUID {
            conditions.append("owner_uid = ?")
            arguments.append(.integer(Int64(ownerUID)))
        }
        let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        // LIMIT is bound like every value, so the statement cache holds one
        // statement per filter shape, whatever limits clients send.
        let sql = "SELECT \(JobRecord.columns) FROM jobs \(filter) ORDER BY id DESC LIMIT ?"
        return try db.query(sql, arguments + [.integer(Int64(limit ?? Int(Int32.max)))]).map(JobRecord.init)
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

    /// Claims the job that should run next, if one may start at `now` and
    /// `accept` takes it (the scheduler's batch rule): it becomes running under
    /// a new lease of this host. A job another host is claiming is skipped.
    func claimNext(now: Double, accept: (JobRecord) -> Bool) throws -> JobRecord? {
        try db.write {
            guard let next = try db.query("""
                SELECT \(JobRecord.columns) FROM jobs
                WHERE state = 'queued' AND not_before <= ?
                ORDER BY priority DESC,
                         COALESCE((SELECT turn FROM owner_turns WHERE uid = jobs.owner_uid), 0),
                         id
                LIMIT 1\(db.claimLock)
                """, [.real(now)]).first.map(JobRecord.init), accept(next)
            else { return nil }
            let token = try db.nextLeaseToken()
            try db.query("""
                UPDATE jobs SET state = 'running', started_at = ?, lease_host = ?, lease_token = ?,
                                lease_expires = \(db.clock) + ?, cancel_requested = 0
                WHERE id = ?
                """, [.real(Self.now()), .text(hostName), .integer(Int64(token)), .real(leaseSeconds), .integer(Int64(next.id))])
            try db.query("""
                INSERT INTO owner_turns (uid, turn) SELECT owner_uid, (SELECT COALESCE(MAX(turn), 0) + 1 FROM owner_turns)
                FROM jobs WHERE id = ? ON CONFLICT (uid) DO UPDATE SET turn = excluded.turn
                """, [.integer(Int64(next.id))])
            try appendEvent(next.id, .running, "started on \(hostName), attempt \(next.attempts + 1) of \(next.maxAttempts) (lease \(token))",
                            Self.now())
            return try record(next.id)
        }
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
            let id = try db.query("""
                INSERT INTO jobs (state, owner_uid, owner_name, priority, job, model, source, max_attempts, steps, count, created_at)
                VALUES ('queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id
                """, [.integer(Int64(owner.uid)), .text(owner.name), .integer(Int64(priority)), .blob(job), .text(model), .text(source),
                      .integer(Int64(maxAttempts)), .integer(Int64(steps)), .integer(Int64(count)), .real(now)]).first?.int(0) ?? 0
            try appendEvent(id, .queued, "submitted by \(owner.name) (uid \(owner.uid)) via \(source) on \(hostName)", now)
            if let receipt {
                try db.query("INSERT INTO receipts (host, name, hash, job_id) VALUES (?, ?, ?, ?)",
                             [.text(hostName), .text(receipt.name), .text(receipt.hash), .integer(Int64(id))])
            }
            try db.notifyQueueChanged()
            return id
        }
        return try record(id)!
    }

    /// Moves `id` from one of `from` to `to`; false if it was in no state of
    /// `from`, or (with `lease`) the job no longer holds that lease: a write
    /// about a running job names its lease, and a stale host's is refused.
    @discardableResult
    func transition(_ id: Int, from: [JobRecord.State], to: JobRecord.State, reason: String,
                    error: String? = nil, resetAttempts: Bool = false, lease: Lease? = nil) throws -> Bool
    {
        precondition(to != .running, "a job starts running only by claimNext")
        let now = Self.now()
        return try db.write {
            var sets = ["state = ?"]
            var arguments: [DatabaseValue] = [.text(to.rawValue)]
            switch to {
            case .succeeded, .failed, .canceled:
                sets += ["finished_at = ?", "error = ?"]
                arguments += [.real(now), error.map { .text($0) } ?? .null]
                if to == .succeeded { sets += ["step = steps", "images_done = count"] }
            case .queued:
                // A job handed back by a clean stop has not crashed anything.
                sets += ["finished_at = NULL", "not_before = 0", "crashes = 0"]
                if resetAttempts { sets += ["attempts = 0", "error = NULL", "step = 0", "images_done = 0"] }
            case .held, .running:
                break
            }
            var condition = "id = ? AND state IN (\(from.map { _ in "?" }.joined(separator: ",")))"
            arguments += [.integer(Int64(id))] + from.map { .text($0.rawValue) }
            if let lease {
                condition += " AND lease_token = ?"
                arguments.append(.integer(Int64(lease.token)))
            }
            try db.query("UPDATE jobs SET \(sets.joined(separator: ", ")) WHERE \(condition)", arguments)
            guard db.changes == 1 else { return false }
            if to.isFinished || resetAttempts { try deleteCheckpoint(id) }
            try appendEvent(id, to, reason, now)
            if to == .queued { try db.notifyQueueChanged() }
            return true
        }
    }

    /// A running job's failure: queued again after a backoff while attempts remain
    /// and the failure is retryable, failed otherwise. Returns the new state;
    /// nil when the job no longer holds `lease` (nothing is written).
    func fail(_ lease: Lease, error: String, retryable: Bool, backoffSeconds: Double) throws -> JobRecord.State? {
        let now = Self.now()
        let id = lease.id
        return try db.write {
            guard let job = try db.query("SELECT \(JobRecord.columns) FROM jobs WHERE id = ?\(db.rowLock)",
                                         [.integer(Int64(id))]).first.map(JobRecord.init),
                  job.state == .running, job.leaseToken == lease.token
            else { return nil }
            let attempts = job.attempts + 1
            if retryable && attempts < job.maxAttempts {
                let delay = backoffSeconds * pow(2, Double(attempts - 1))
                try db.query("UPDATE jobs SET state = 'queued', attempts = ?, error = ?, not_before = ? WHERE id = ?",
                             [.integer(Int64(attempts)), .text(error), .real(now + delay), .integer(Int64(id))])
                try appendEvent(id, .queued, "attempt \(attempts) of \(job.maxAttempts) failed, retrying in \(Int(delay)) s: \(error)", now)
                try db.notifyQueueChanged()
                return .queued
            }
            try db.query("UPDATE jobs SET state = 'failed', attempts = ?, error = ?, finished_at = ? WHERE id = ?",
                         [.integer(Int64(attempts)), .text(error), .real(now), .integer(Int64(id))])
            try deleteCheckpoint(id)
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

    // MARK: Leases

    /// What renewing this host's leases found.
    struct Renewal {
        /// Jobs whose lease another claim has taken, or that ended elsewhere: stop, write nothing.
        var lost: [Int] = []
        /// Jobs a client on another host asked to cancel.
        var cancelRequested: [Int] = []
    }

    /// Extends this host's leases by `leaseSeconds` and records each job's
    /// progress (steps done over every stage), which hosts that do not run it show.
    func renew(_ leases: [(lease: Lease, step: Int)]) throws -> Renewal {
        guard !leases.isEmpty else { return Renewal() }
        return try db.write {
            var renewal = Renewal()
            for (lease, step) in leases {
                let rows = try db.query("""
                    UPDATE jobs SET lease_expires = \(db.clock) + ?, step = ?
                    WHERE id = ? AND state = 'running' AND lease_token = ? RETURNING cancel_requested
                    """, [.real(leaseSeconds), .integer(Int64(step)), .integer(Int64(lease.id)), .integer(Int64(lease.token))])
                if rows.isEmpty { renewal.lost.append(lease.id) } else if rows[0].int(0) != 0 { renewal.cancelRequested.append(lease.id) }
            }
            return renewal
        }
    }

    /// Asks the host running `id` to cancel it (at its next renewal); false if it is not running.
    func requestCancel(_ id: Int, by who: String) throws -> Bool {
        try db.write {
            try db.query("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'", [.integer(Int64(id))])
            guard db.changes == 1 else { return false }
            try insertNote(id, "cancel requested by \(who) on \(hostName)")
            return true
        }
    }

    /// Running jobs no live host holds go back to the queue without consuming
    /// an attempt: those whose lease expired and, at this host's start-up
    /// (`startup`), those it held itself when it stopped. A job that was
    /// running at `poisonAfter` such ends in a row (0: never) is failed instead,
    /// so a job that crashes hosts cannot crash them forever.
    /// Returns the ids queued again and the ids failed.
    func requeueAbandoned(poisonAfter: Int, startup: Bool) throws -> (queued: [Int], poisoned: [Int]) {
        let now = Self.now()
        return try db.write {
            var result: (queued: [Int], poisoned: [Int]) = ([], [])
            // At start-up, this host's own jobs; on a queue no other host
            // shares, every running job is this host's, whatever it was called.
            let mine = startup ? (db.isShared ? " OR lease_host = ?" : " OR 1 = 1") : ""
            let rows = try db.query("""
                SELECT id, crashes, lease_host, lease_expires < \(db.clock) FROM jobs
                WHERE state = 'running' AND (lease_expires IS NULL OR lease_expires < \(db.clock)\(mine))\(db.claimLock)
                """, startup && db.isShared ? [.text(hostName)] : [])
            for row in rows {
                let (id, crashes) = (row.int(0), row.int(1) + 1)
                let host = row.string(2) ?? "a host"
                let why = row.int(3) == 0 ? "the daemon stopped while it ran (unclean exit \(crashes))"
                    : "the lease of \(host) expired (\(crashes) in a row)"
                if poisonAfter > 0 && crashes >= poisonAfter {
                    let reason = "the daemon exited uncleanly \(crashes) times in a row while this job ran, so it is not run again by itself (diffctl retry runs it again)"
                    try db.query("UPDATE jobs SET state = 'failed', crashes = ?, error = ?, finished_at = ? WHERE id = ?",
                                 [.integer(Int64(crashes)), .text(reason), .real(now), .integer(Int64(id))])
                    try appendEvent(id, .failed, "\(why): \(reason)", now)
                    result.poisoned.append(id)
                } else {
                    try db.query("UPDATE jobs SET state = 'queued', crashes = ?, not_before = 0 WHERE id = ?",
                                 [.integer(Int64(crashes)), .integer(Int64(id))])
                    try appendEvent(id, .queued, "\(why); queued again", now)
                    result.queued.append(id)
                }
            }
            if !result.queued.isEmpty { try db.notifyQueueChanged() }
            return result
        }
    }

    // MARK: Checkpoints in the database (the shared queue: any host resumes any job)

    func checkpoint(of id: Int) throws -> Data? {
        try db.query("SELECT data FROM checkpoints WHERE job_id = ?", [.integer(Int64(id))]).first?.data(0)
    }

    /// Stores a running job's checkpoint; false (nothing written) when the job
    /// no longer holds `lease`.
    func writeCheckpoint(_ data: Data, lease: Lease) throws -> Bool {
        try db.write {
            let holds = try db.query("SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND lease_token = ?\(db.rowLock)",
                                     [.integer(Int64(lease.id)), .integer(Int64(lease.token))])
            guard !holds.isEmpty else { return false }
            try db.query("""
                INSERT INTO checkpoints (job_id, lease_token, data) VALUES (?, ?, ?)
                ON CONFLICT (job_id) DO UPDATE SET lease_token = excluded.lease_token, data = excluded.data
                """, [.integer(Int64(lease.id)), .integer(Int64(lease.token)), .blob(data)])
            return true
        }
    }

    func removeCheckpoint(of id: Int) throws {
        try db.write { try deleteCheckpoint(id) }
    }

    /// Inside a write.
    private func deleteCheckpoint(_ id: Int) throws { try db.query("DELETE FROM checkpoints WHERE job_id = ?", [.integer(Int64(id))]) }

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

    var cachedStatements: Int { db.cachedStatements }

    // MARK: Spool receipts (of this host's spool; '' marks one from before hosts were named)

    func receipt(name: String, hash: String) throws -> Int? {
        try db.query("SELECT job_id FROM receipts WHERE host IN (?, '') AND name = ? AND hash = ?",
                     [.text(hostName), .text(name), .text(hash)]).first?.int(0)
    }

    func dropReceipt(name: String, hash: String) throws {
        try db.write {
            try db.query("DELETE FROM receipts WHERE host IN (?, '') AND name = ? AND hash = ?", [.text(hostName), .text(name), .text(hash)])
        }
    }

    /// Receipts of files no longer in the spool (the daemon stopped between
    /// unlinking a file and dropping its receipt).
    func dropReceipts(keeping names: Set<String>) throws {
        let stale = try db.query("SELECT name, hash FROM receipts WHERE host IN (?, '')", [.text(hostName)]).compactMap {
            row -> (String, String)? in
            guard let name = row.string(0), let hash = row.string(1), !names.contains(name) else { return nil }
            return (name, hash)
        }
        for (name, hash) in stale { try dropReceipt(name: name, hash: hash) }
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
    public static func integrity(of path: String) throws -> String { try SQLiteDatabase(path: path).integrityCheck() }
}
