import DiffusionKernels
import Foundation

/// `diffusiond migrate-queue --to URL`: a stopped host's SQLite queue copied
/// into an empty PostgreSQL database, so the host (and others) go on from it
/// as a shared queue (docs/cluster.md). Jobs keep their ids, states, owners,
/// attempts and events; jobs the host was running when it stopped are queued
/// again (as a restart would) and keep their checkpoint files as the
/// database's checkpoints, so they resume where they were.
public enum QueueMigration {
    public struct Counts: Sendable {
        public let jobs: Int
        public let events: Int
        public let checkpoints: Int
    }

    private static let jobColumns = """
        id, state, owner_uid, owner_name, priority, job, model, source, attempts, max_attempts, not_before, steps, count,
        step, images_done, error, created_at, started_at, finished_at, crashes
        """

    public static func run(config: DaemonConfig, to url: String) throws -> Counts {
        // The host must be stopped: its lock is taken for the copy.
        let lock = try StateLock(path: "\(config.stateDirectory)/diffusiond.lock")
        defer { withExtendedLifetime(lock) {} }
        let source = try SQLiteDatabase(path: config.database)
        try source.migrate()
        let target = try PostgresDatabase(url: url, hostName: config.hostName)
        try target.migrate()
        let checkpoints = CheckpointFiles(directory: config.checkpoints)
        return try target.write {
            let existing = try target.query("SELECT COUNT(*) FROM jobs").first?.int(0) ?? 0
            guard existing == 0 else {
                throw DiffusionError("\(target.description) already holds \(existing) job(s); migrate into an empty database")
            }
            let placeholders = Array(repeating: "?", count: 20).joined(separator: ", ")
            var copied = (jobs: 0, events: 0, checkpoints: 0)
            for row in try source.query("SELECT \(jobColumns) FROM jobs ORDER BY id") {
                var values = row.values
                if values[1] == .text("running") { values[1] = .text("queued") }
                try target.query("INSERT INTO jobs (\(jobColumns)) VALUES (\(placeholders))", values)
                let id = row.int(0)
                if let checkpoint = try? checkpoints.read(id) {
                    try target.query("INSERT INTO checkpoints (job_id, lease_token, data) VALUES (?, 0, ?)",
                                     [.integer(Int64(id)), .blob(try JSONEncoder().encode(checkpoint))])
                    copied.checkpoints += 1
                }
                copied.jobs += 1
            }
            for row in try source.query("SELECT job_id, time, state, reason FROM events ORDER BY id") {
                try target.query("INSERT INTO events (job_id, time, state, reason) VALUES (?, ?, ?, ?)", row.values)
                copied.events += 1
            }
            try target.query("""
                INSERT INTO events (job_id, time, state, reason) VALUES (NULL, ?, 'migrated', ?)
                """, [.real(JobStore.now()), .text("\(copied.jobs) job(s) copied from \(config.database) on \(config.hostName)")])
            for row in try source.query("SELECT uid, turn FROM owner_turns") {
                try target.query("INSERT INTO owner_turns (uid, turn) VALUES (?, ?)", row.values)
            }
            for row in try source.query("SELECT name, hash, job_id FROM receipts") {
                try target.query("INSERT INTO receipts (host, name, hash, job_id) VALUES (?, ?, ?, ?)",
                                 [.text(config.hostName)] + row.values)
            }
            // New ids go on after the copied ones.
            try target.query("SELECT setval(pg_get_serial_sequence('jobs', 'id'), GREATEST((SELECT MAX(id) FROM jobs), 1))")
            try target.query("SELECT setval(pg_get_serial_sequence('events', 'id'), GREATEST((SELECT MAX(id) FROM events), 1))")
            return Counts(jobs: copied.jobs, events: copied.events, checkpoints: copied.checkpoints)
        }
    }
}
