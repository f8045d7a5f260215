import DiffusionKernels
import DiffusionRender
import Foundation

/// A job's outputs, `outputs/JOB-ID/`: written whole into a hidden sibling and
/// renamed into place once the queue has recorded the job's success, so the
/// directory either holds every file or is absent, and there is one per job
/// even when hosts share the outputs (docs/cluster.md).
/// The path comes from the job's id alone; nothing a job says can move it.
///
/// Files are given to the job's owner by descriptor: the daemon opens each file
/// it wrote with O_NOFOLLOW, checks it is a regular file, and `fchown`s what it
/// opened, then the directory last. Until then the directory is the daemon's,
/// mode 0700, so its owner cannot swap a file for a link to something else.
/// Given away, outputs are 0750/0640 with the owner's primary group.
enum OutputDirectory {
    static func path(outputs: String, id: Int) -> String { "\(outputs)/\(id)" }

    /// Where a finished render's files wait for the queue to record the job's
    /// success under `lease`: `.JOB-ID.partial-TOKEN` beside the outputs.
    static func partialPath(outputs: String, lease: Lease) -> String { "\(outputs)/.\(lease.id).partial-\(lease.token)" }

    /// Writes `render`'s files into the job's partial directory, given to
    /// `owner` when the daemon may give files away (root, or CAP_CHOWN as the
    /// systemd unit grants). `settle` moves it into sight once the queue has
    /// recorded the success: a host whose lease was taken never does.
    static func write(_ render: CascadeRender, outputs: String, lease: Lease, owner: uid_t) throws {
        let partial = partialPath(outputs: outputs, lease: lease)
        let fm = FileManager.default
        try? fm.removeItem(atPath: partial)
        guard mkdir(partial, 0o700) == 0 else { throw DiffusionError.system("cannot create \(partial)") }
        do {
            try RenderOutput.write(render, to: partial)
            try giveAway(directory: partial, to: owner)
        } catch {
            // Checked before the partial files go, which frees the space again.
            let full = (error as? DiffusionError)?.isDiskFull == true || isFull(outputs)
            try? fm.removeItem(atPath: partial)
            if full { throw DiffusionError("no space left on device for \(path(outputs: outputs, id: lease.id))", errno: ENOSPC) }
            throw error
        }
    }

    /// The partial directory of a success the queue recorded becomes `outputs/JOB-ID`.
    static func settle(outputs: String, lease: Lease) throws {
        let directory = path(outputs: outputs, id: lease.id)
        let partial = partialPath(outputs: outputs, lease: lease)
        guard access(partial, F_OK) == 0 else { return }
        try? FileManager.default.removeItem(atPath: directory)
        guard rename(partial, directory) == 0 else { throw DiffusionError.system("cannot move the outputs into \(directory)") }
    }

    /// A partial directory whose success the queue refused (the lease was lost).
    static func discard(outputs: String, lease: Lease) {
        try? FileManager.default.removeItem(atPath: partialPath(outputs: outputs, lease: lease))
    }

    /// Partial directories left by a host that stopped between the queue's
    /// record and the rename, or by a host fenced off: each is settled when the
    /// job succeeded under its token, removed when the job ended otherwise or
    /// under another token, and left while its job may still be settling.
    static func sweep(outputs: String, record: (Int) throws -> JobRecord?) throws {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: outputs)) ?? [] where name.hasPrefix(".") {
            let parts = name.dropFirst().split(separator: ".", maxSplits: 1)
            guard parts.count == 2, let id = Int(parts[0]), parts[1].hasPrefix("partial-"),
                  let token = Int(parts[1].dropFirst("partial-".count))
            else { continue }
            let lease = Lease(id: id, token: token)
            guard let job = try record(id) else {
                discard(outputs: outputs, lease: lease)
                continue
            }
            if job.state == .succeeded && job.leaseToken == token {
                try settle(outputs: outputs, lease: lease)
            } else if !(job.state == .running && job.leaseToken == token) {
                discard(outputs: outputs, lease: lease)
            }
        }
    }

    static func remove(outputs: String, id: Int) {
        try? FileManager.default.removeItem(atPath: path(outputs: outputs, id: id))
    }

    /// The files of a finished job, sorted, as absolute paths.
    static func files(outputs: String, id: Int) -> [String] {
        let directory = path(outputs: outputs, id: id)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { "\(directory)/\($0)" }
    }

    /// A write that failed without an errno (inside libpng, say) on a full file system.
    private static func isFull(_ directory: String) -> Bool {
        var stats = statvfs()
        return statvfs(directory, &stats) == 0 && stats.f_bavail == 0
    }

    /// Every file of `directory` (which the daemon made and alone can write),
    /// its subdirectories (a cascade's `stage-K/`) the same way, then the
    /// directory itself, to `owner`: 0640/0750 with the owner's group. The
    /// top directory stays 0700 and the daemon's until last, so nothing in it
    /// can be swapped while this runs.
    /// When the daemon may not give files away (EPERM: neither root nor
    /// CAP_CHOWN), they stay the daemon's and readable by all, or no one but the
    /// daemon could read them.
    static func giveAway(directory: String, to owner: uid_t) throws {
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard directoryFD >= 0 else { throw DiffusionError.system("cannot open \(directory)") }
        defer { close(directoryFD) }
        var given = true
        for name in try FileManager.default.contentsOfDirectory(atPath: directory).sorted() {
            var info = stat()
            if fstatat(directoryFD, name, &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_mode & S_IFMT == S_IFDIR {
                try giveAway(directory: "\(directory)/\(name)", to: owner)
                continue
            }
            given = try handOver(openat(directoryFD, name, fileFlags), "\(directory)/\(name)", to: owner) && given
        }
        _ = try handOver(dup(directoryFD), directory, to: owner, mode: given ? 0o750 : 0o755)
    }

    /// One file (a preview) to `owner`, 0640, before it is renamed into sight.
    static func giveAway(file path: String, to owner: uid_t) throws {
        _ = try handOver(open(path, fileFlags), path, to: owner)
    }

    private static let fileFlags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK

    /// `fd`, just opened (never by a path followed later), to `owner` and its
    /// group with `mode`; false, and world-readable, when the daemon may not.
    private static func handOver(_ fd: Int32, _ path: String, to owner: uid_t, mode: mode_t = 0o640) throws -> Bool {
        guard fd >= 0 else { throw DiffusionError.system("cannot open \(path)") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG || info.st_mode & S_IFMT == S_IFDIR else {
            throw DiffusionError("\(path) is neither a file nor a directory")
        }
        let group = owner == geteuid() ? getegid() : Owner.primaryGroup(owner) ?? getegid()
        let given = (owner == geteuid() && group == getegid()) || fchown(fd, owner, group) == 0
        fchmod(fd, given ? mode : mode | 0o005)
        return given
    }
}
