import DiffusionKernels
import Foundation

/// Every failure of diffusiond's own code, as one line that says what to fix.
///
/// Whether a job that hit it is tried again is decided where the error is made:
/// `transient` marks a failure that may pass by itself (a busy database, an
/// interrupted or failing device, too many open files); everything else (a bad
/// job, a missing model, a full disk) fails the job at once. `code` keeps the
/// system's number when a call failed, so nothing has to match message text.
public struct DiffusionError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public let transient: Bool
    public let code: Int32?

    public init(_ message: String, transient: Bool = false, errno: Int32? = nil) {
        self.message = message
        self.transient = transient
        self.code = errno
    }

    /// A tensor file's problem: "PATH: REASON".
    public init(path: String, _ reason: String) { self.init("\(path): \(reason)") }

    /// A failed system call: `what` and strerror, transient for the errnos that pass.
    public static func system(_ what: String, errno number: Int32 = Glibc.errno) -> DiffusionError {
        DiffusionError("\(what): \(String(cString: strerror(number)))", transient: transientErrnos.contains(number),
                       errno: number)
    }

    /// Failures that may go away when the same call is made again later.
    public static let transientErrnos: Set<Int32> = [EAGAIN, EINTR, EIO, EBUSY, ENOMEM, EMFILE, ENFILE, ETIMEDOUT]

    /// Whether `error` may pass by itself; an error from outside this project
    /// (Foundation's) is treated as transient, so it costs an attempt, not the job.
    public static func isTransient(_ error: Error) -> Bool { (error as? DiffusionError)?.transient ?? true }

    public var isDiskFull: Bool { code == ENOSPC || code == EDQUOT }

    public var description: String { message }
}
