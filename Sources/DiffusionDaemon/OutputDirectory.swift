import DiffusionRender
import Foundation

/// A job's outputs, `outputs/JOB-ID/`: written whole into a hidden sibling and
/// renamed into place, so the directory either holds every file or is absent.
/// The path comes from the job's id alone; nothing a job says can move it.
enum OutputDirectory {
    struct DiskFull: Error, CustomStringConvertible {
        let message: String
        var description: String { message }
    }

    static func path(outputs: String, id: Int) -> String { "\(outputs)/\(id)" }

    /// Writes `render`'s files as `directory`, given to `owner` when the daemon may
    /// give files away (root, or CAP_CHOWN as the systemd unit grants); otherwise
    /// they stay the daemon's, world-readable.
    static func publish(_ render: Render, to directory: String, owner: uid_t) throws {
        let url = URL(fileURLWithPath: directory)
        let parent = url.deletingLastPathComponent().path
        let partial = "\(parent)/.\(url.lastPathComponent).partial"
        let fm = FileManager.default
        try? fm.removeItem(atPath: partial)
        do {
            try RenderOutput.write(render, samples: render.sample, to: partial)
        } catch {
            try? fm.removeItem(atPath: partial)
            if isDiskFull(parent, error) { throw DiskFull(message: "no space left on device for \(directory)") }
            throw error
        }
        giveAway(partial, to: owner)
        try? fm.removeItem(atPath: directory)
        guard rename(partial, directory) == 0 else {
            let reason = String(cString: strerror(errno))
            try? fm.removeItem(atPath: partial)
            throw RenderError("cannot move the outputs into \(directory): \(reason)")
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

    private static func isDiskFull(_ directory: String, _ error: Error) -> Bool {
        if "\(error)".contains(String(cString: strerror(ENOSPC))) { return true }
        var stats = statvfs()
        return statvfs(directory, &stats) == 0 && stats.f_bavail == 0
    }

    /// chown to the job's owner; EPERM (no CAP_CHOWN) leaves the files as they are.
    static func giveAway(_ path: String, to owner: uid_t) {
        guard owner != geteuid() else { return }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        for item in [path] + names.map({ "\(path)/\($0)" }) where chown(item, owner, gid_t.max) != 0 { return }
    }
}
