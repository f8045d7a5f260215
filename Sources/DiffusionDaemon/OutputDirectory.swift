import DiffusionKernels
import DiffusionRender
import Foundation

/// A job's outputs, `outputs/JOB-ID/`: written whole into a hidden sibling and
/// renamed into place, so the directory either holds every file or is absent.
/// The path comes from the job's id alone; nothing a job says can move it.
///
/// Files are given to the job's owner by descriptor: the daemon opens each file
/// it wrote with O_NOFOLLOW, checks it is a regular file, and `fchown`s what it
/// opened, then the directory last. Until then the directory is the daemon's,
/// mode 0700, so its owner cannot swap a file for a link to something else.
/// Given away, outputs are 0750/0640 with the owner's primary group.
enum OutputDirectory {
    static func path(outputs: String, id: Int) -> String { "\(outputs)/\(id)" }

    /// Writes `render`'s files as `directory`, given to `owner` when the daemon may
    /// give files away (root, or CAP_CHOWN as the systemd unit grants).
    static func publish(_ render: CascadeRender, to directory: String, owner: uid_t) throws {
        let url = URL(fileURLWithPath: directory)
        let parent = url.deletingLastPathComponent().path
        let partial = "\(parent)/.\(url.lastPathComponent).partial"
        let fm = FileManager.default
        try? fm.removeItem(atPath: partial)
        guard mkdir(partial, 0o700) == 0 else { throw DiffusionError.system("cannot create \(partial)") }
        do {
            try RenderOutput.write(render, to: partial)
            try giveAway(directory: partial, to: owner)
        } catch {
            // Checked before the partial files go, which frees the space again.
            let full = (error as? DiffusionError)?.isDiskFull == true || isFull(parent)
            try? fm.removeItem(atPath: partial)
            if full { throw DiffusionError("no space left on device for \(directory)", errno: ENOSPC) }
            throw error
        }
        try? fm.removeItem(atPath: directory)
        guard rename(partial, directory) == 0 else {
            let failure = DiffusionError.system("cannot move the outputs into \(directory)")
            try? fm.removeItem(atPath: partial)
            throw failure
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
