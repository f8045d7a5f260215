import DiffusionKernels
import Foundation

/// The spool directory, after Postfix's pickup: a client writes `tmp/NAME.json`
/// and renames it into `new/`; the daemon reads `new/`, queues each job, and only
/// then unlinks the file. A file it cannot accept moves to `rejected/NAME.json`
/// with `rejected/NAME.error` saying why.
///
/// Only regular `*.json` files with one link are read (no dotfiles; opened with
/// O_NOFOLLOW), and a file's owner is its owner in `fstat`, whatever it says.
/// A file name plus its content hash is recorded with the job in the same
/// transaction, so a daemon that stops between queuing and unlinking finds the
/// receipt and unlinks the file without queuing it twice.
final class Spool {
    struct Entry {
        let name: String
        let data: Data
        let owner: uid_t
        let hash: String
    }

    enum Decision {
        case queued
        case rejected(String)
        /// Leave the file for a later scan (the queue could not be written).
        case later(String)
    }

    let tmp: String
    let new: String
    let rejected: String
    private let maxBytes: Int

    init(root: String, maxBytes: Int) throws {
        tmp = "\(root)/tmp"
        new = "\(root)/new"
        rejected = "\(root)/rejected"
        self.maxBytes = maxBytes
        // tmp/ and new/ take anyone's files and list for no one but the daemon
        // (sticky, so no user renames another's); rejected/ is readable.
        for (path, mode) in [(root, 0o755), (tmp, 0o1733), (new, 0o1733), (rejected, 0o755)] as [(String, mode_t)] {
            if mkdir(path, mode) != 0 && errno != EEXIST {
                throw DiffusionError("cannot create the spool directory \(path): \(String(cString: strerror(errno)))")
            }
            chmod(path, mode)
        }
    }

    /// Spool hygiene, as maildir readers do it: files left in `tmp/` (a writer
    /// that died before its rename) and names in `new/` a scan never reads
    /// (dotfiles, other endings) once older than `abandonedAfter` seconds, and
    /// rejected files older than `rejectedAfter`. Returns what it removed.
    func clean(abandonedAfter: Double, rejectedAfter: Double) -> [String] {
        let now = Date().timeIntervalSince1970
        let readable = Set(candidates())
        var removed: [String] = []
        for (directory, age, keep) in [(tmp, abandonedAfter, Set<String>()), (new, abandonedAfter, readable),
                                       (rejected, rejectedAfter, Set<String>())] {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where !keep.contains(name) {
                var info = stat()
                let path = "\(directory)/\(name)"
                guard lstat(path, &info) == 0, info.st_mode & S_IFMT != S_IFDIR,
                      now - Double(info.st_mtim.tv_sec) > age, unlink(path) == 0
                else { continue }
                removed.append(path)
            }
        }
        return removed
    }

    /// Names in `new/` that a scan would read.
    func candidates() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: new)) ?? []
        return names.filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") && $0.count > 5 }.sorted()
    }

    /// Reads every candidate; `admit` decides, `picked` runs after a file is unlinked.
    func scan(admit: (Entry) -> Decision, picked: (Entry) -> Void, refused: (String, String) -> Void) {
        for name in candidates() {
            let path = "\(new)/\(name)"
            let read = Self.read(path, maxBytes: maxBytes)
            switch read {
            case .gone:
                continue
            case .refused(let reason, let owner):
                reject(name, owner: owner, reason: reason)
                refused(name, reason)
            case .file(let data, let owner):
                let entry = Entry(name: name, data: data, owner: owner, hash: Self.hash(data))
                switch admit(entry) {
                case .queued:
                    if unlink(path) == 0 || errno == ENOENT { picked(entry) }
                case .rejected(let reason):
                    reject(name, owner: owner, reason: reason)
                    refused(name, reason)
                case .later:
                    continue
                }
            }
        }
    }

    private enum Read {
        case gone
        case refused(String, owner: uid_t?)
        case file(Data, owner: uid_t)
    }

    private static func read(_ path: String, maxBytes: Int) -> Read {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 {
            switch errno {
            case ENOENT: return .gone
            case ELOOP: return .refused("a symbolic link; the spool takes regular files only", owner: nil)
            default: return .refused("cannot be opened: \(String(cString: strerror(errno)))", owner: nil)
            }
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return .refused("cannot be read: \(String(cString: strerror(errno)))", owner: nil) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { return .refused("not a regular file", owner: info.st_uid) }
        guard info.st_nlink == 1 else {
            return .refused("has \(info.st_nlink) links; a spool file must have one (copy it, do not hard-link it)", owner: info.st_uid)
        }
        guard info.st_size <= maxBytes else {
            return .refused("is \(info.st_size) bytes, over the limit of \(maxBytes)", owner: info.st_uid)
        }
        guard let data = readWhole(fd, size: Int(info.st_size)) else { return .refused("cannot be read whole", owner: info.st_uid) }
        return .file(data, owner: info.st_uid)
    }

    private func reject(_ name: String, owner: uid_t?, reason: String) {
        let base = String(name.dropLast(".json".count))
        // A FIFO, device or directory is removed, not kept: rejected/ holds files people can read.
        var info = stat()
        if lstat("\(new)/\(name)", &info) == 0, info.st_mode & S_IFMT == S_IFREG || info.st_mode & S_IFMT == S_IFLNK {
            rename("\(new)/\(name)", "\(rejected)/\(name)")
        } else if info.st_mode & S_IFMT == S_IFDIR {
            rmdir("\(new)/\(name)")
        } else {
            unlink("\(new)/\(name)")
        }
        let errorPath = "\(rejected)/\(base).error"
        unlink(errorPath)
        if FileManager.default.createFile(atPath: errorPath, contents: Data("\(reason)\n".utf8), attributes: [.posixPermissions: 0o644]),
           let owner
        {
            try? OutputDirectory.giveAway(file: errorPath, to: owner)
        }
    }

    /// FNV-1a, 64 bits: a content fingerprint for the idempotency key, not a MAC.
    static func hash(_ data: Data) -> String {
        var value: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in data {
            value ^= UInt64(byte)
            value &*= 0x100_0000_01B3
        }
        return String(format: "%016llx", value)
    }
}

/// Exactly `size` bytes from `fd`, or nil when the file ends early or a read fails.
/// (FoundationEssentials' `FileManager.contents` leaks a page on an empty file:
/// found by `make fuzz`, so the daemon reads its files itself.)
func readWhole(_ fd: Int32, size: Int) -> Data? {
    var data = Data(count: size)
    let count = data.withUnsafeMutableBytes { buffer -> Int in
        var done = 0
        while done < buffer.count {
            let got = Glibc.read(fd, buffer.baseAddress! + done, buffer.count - done)
            if got <= 0 { return got < 0 ? -1 : done }
            done += got
        }
        return done
    }
    return count == size ? data : nil
}
