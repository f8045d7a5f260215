import DiffusionKernels
import DiffusionRender
import Foundation

/// A running job's checkpoint file, `checkpoints/JOB-ID.json`: written to a
/// temporary file, flushed to disk, then renamed over the last one, so a crash
/// leaves either the old checkpoint or the new one, never half of one.
enum Checkpoints {
    static func path(directory: String, id: Int) -> String { "\(directory)/\(id).json" }

    static func write(_ checkpoint: RenderCheckpoint, to path: String) throws {
        let data = try JSONEncoder().encode(checkpoint)
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw failure("cannot create \(temporary)", errno) }
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
            throw failure("cannot write \(temporary)", status)
        }
        guard rename(temporary, path) == 0 else { throw failure("cannot rename \(temporary)", errno) }
    }

    /// The checkpoint at `path`; nil when there is none, an error when the file
    /// is there but unreadable (the caller says so in the job's events).
    static func read(_ path: String) throws -> RenderCheckpoint? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, let data = readWhole(fd, size: Int(info.st_size)) else {
            throw DiffusionError.system("cannot read the checkpoint \(path)")
        }
        do {
            return try JSONDecoder().decode(RenderCheckpoint.self, from: data)
        } catch {
            throw DiffusionError("the checkpoint \(path) is corrupt (\(data.count) bytes that do not decode)")
        }
    }

    static func remove(_ path: String) {
        unlink(path)
        unlink(path + ".tmp")
    }

    private static func failure(_ what: String, _ code: Int32) -> Error { DiffusionError.system(what, errno: code) }
}
