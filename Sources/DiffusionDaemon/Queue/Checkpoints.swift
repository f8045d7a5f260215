import DiffusionKernels
import DiffusionRender
import Foundation
import Logging

/// Where running jobs' checkpoints are kept, by the render thread alone: files
/// on a single host, the queue database's table when hosts share a queue (so
/// any host resumes any job). A write names the job's lease and is refused
/// (false) once the job no longer holds it.
protocol CheckpointStore: AnyObject {
    /// The job's checkpoint; nil when there is none, an error when one is
    /// there but unreadable (the caller says so in the job's events).
    func read(_ id: Int) throws -> RenderCheckpoint?
    func write(_ checkpoint: RenderCheckpoint, lease: Lease) throws -> Bool
    /// Drops a checkpoint that cannot be resumed from (the render thread, holding the lease).
    func remove(_ id: Int)
    /// The loop, once the job's render is over here: a file goes; the
    /// table's row went with the queue's record of the end, under its lease.
    func renderEnded(_ id: Int)
    /// At start-up: checkpoints of jobs that ended, left by a daemon that
    /// stopped between the queue's record of the end and `renderEnded`.
    func sweep(record: (Int) throws -> JobRecord?) throws
}

/// `checkpoints/JOB-ID.json`: written to a temporary file, flushed to disk,
/// then renamed over the last one, so a crash leaves either the old checkpoint
/// or the new one, never half of one. One host holds every lease of its queue
/// file, so the lease is not checked here.
final class CheckpointFiles: CheckpointStore {
    let directory: String

    init(directory: String) { self.directory = directory }

    func path(_ id: Int) -> String { "\(directory)/\(id).json" }

    func read(_ id: Int) throws -> RenderCheckpoint? { try Self.read(path(id)) }

    func write(_ checkpoint: RenderCheckpoint, lease: Lease) throws -> Bool {
        let data = try JSONEncoder().encode(checkpoint)
        let path = path(lease.id)
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DiffusionError.system("cannot create \(temporary)") }
        let written = data.withUnsafeBytes { raw -> Int in
            var done = 0
            while done < raw.count {
                let count = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                if count <= 0 { return -1 }
                done += count
            }
            return done
        }
        let status = written == data.count && fsync(fd) == 0 ? 0 : errno
        close(fd)
        guard status == 0 else {
            unlink(temporary)
            throw DiffusionError.system("cannot write \(temporary)", errno: status)
        }
        guard rename(temporary, path) == 0 else { throw DiffusionError.system("cannot rename \(temporary)") }
        return true
    }

    func remove(_ id: Int) {
        unlink(path(id))
        unlink(path(id) + ".tmp")
    }

    func renderEnded(_ id: Int) { remove(id) }

    func sweep(record: (Int) throws -> JobRecord?) throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for id in Set(names.compactMap { Int($0.prefix { $0 != "." }) }) {
            if try record(id)?.state.isFinished ?? true { remove(id) }
        }
    }

    /// The checkpoint file at `path` (also the fuzz target's entry).
    static func read(_ path: String) throws -> RenderCheckpoint? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, let data = readWhole(fd, size: Int(info.st_size)) else {
            throw DiffusionError.system("cannot read the checkpoint \(path)")
        }
        return try decode(data, what: "the checkpoint \(path)")
    }

    static func decode(_ data: Data, what: String) throws -> RenderCheckpoint {
        do {
            return try JSONDecoder().decode(RenderCheckpoint.self, from: data)
        } catch {
            throw DiffusionError("\(what) is corrupt (\(data.count) bytes that do not decode)")
        }
    }
}

/// The shared queue's `checkpoints` table, through a connection of the render
/// thread's own. A checkpoint that cannot reach the database is skipped (the
/// render goes on; the next one may get through), never the job's failure.
final class CheckpointTable: CheckpointStore {
    private let store: JobStore
    private let log = Logger(label: "diffusiond.worker")

    init(store: JobStore) { self.store = store }

    func read(_ id: Int) throws -> RenderCheckpoint? {
        try store.checkpoint(of: id).map { try CheckpointFiles.decode($0, what: "the checkpoint of job \(id)") }
    }

    func write(_ checkpoint: RenderCheckpoint, lease: Lease) throws -> Bool {
        let data = try JSONEncoder().encode(checkpoint)
        do {
            return try store.writeCheckpoint(data, lease: lease)
        } catch let error as DiffusionError where error.transient {
            log.warning("job \(lease.id): checkpoint skipped: \(error)")
            return true
        }
    }

    func remove(_ id: Int) { try? store.removeCheckpoint(of: id) }

    func renderEnded(_ id: Int) {}

    func sweep(record: (Int) throws -> JobRecord?) throws {}
}
