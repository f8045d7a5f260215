import DiffusionRender
import Foundation

/// A blocking client of the daemon's socket, for diffctl, tests and benchmarks:
/// one JSON object per line each way (docs/protocol.md).
public final class DaemonClient {
    public struct NoDaemon: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// The version diffctl and the daemon report (`--version`, `ping`).
    public static var programVersion: String { RenderOutput.programVersion }

    private let fd: Int32
    private var buffer: [UInt8] = []

    /// The socket diffctl talks to: `--socket`, then `$DIFFUSIOND_SOCKET`, then the default.
    public static func socketPath(_ option: String?) -> String {
        option ?? ProcessInfo.processInfo.environment["DIFFUSIOND_SOCKET"] ?? DaemonConfig().socketPath
    }

    public init(socketPath: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NoDaemon(message: "cannot make a socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        // No close() before a throw from here on: the object is whole, so deinit runs and closes it (once).
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw NoDaemon(message: "socket path \(socketPath) is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard status == 0 else {
            let code = errno
            if code == EACCES {
                throw NoDaemon(message: "permission denied on \(socketPath): only members of the socket's group (diffusiond) may talk to the daemon; ask an operator to add you (docs/protocol.md)")
            }
            throw NoDaemon(message: "no daemon at \(socketPath): \(String(cString: strerror(code)))")
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// How long `receive` waits for the daemon before it fails (0: forever, the default).
    public func setReceiveTimeout(seconds: Double) {
        var limit = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Waits until a daemon at `socketPath` answers a ping: true then; false after
    /// `seconds`, or as soon as `alive()` says the daemon's process has gone.
    public static func waitForDaemon(at socketPath: String, seconds: Double, alive: () -> Bool = { true }) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline && alive() {
            if let client = try? DaemonClient(socketPath: socketPath), (try? client.call(["verb": "ping"]))?["ok"] as? Bool == true {
                return true
            }
            usleep(20_000)
        }
        return false
    }

    /// Sends one request object.
    public func send(_ request: [String: Any]) throws {
        var data = try JSONSerialization.data(withJSONObject: request, options: [.withoutEscapingSlashes])
        data.append(UInt8(ascii: "\n"))
        try sendRaw(data)
    }

    /// Sends bytes as they are (tests send malformed frames this way).
    public func sendRaw(_ data: Data) throws {
        try data.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let sent = Glibc.send(fd, raw.baseAddress! + done, raw.count - done, Int32(MSG_NOSIGNAL))
                if sent < 0 && errno == EINTR { continue }
                guard sent > 0 else { throw Self.failure(sent == 0 ? 0 : errno) }
                done += sent
            }
        }
    }

    /// The next reply line, as an object.
    public func receive() throws -> [String: Any] {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Data(buffer[..<newline])
                buffer.removeSubrange(...newline)
                guard let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any] else {
                    throw NoDaemon(message: "the daemon sent a line that is not a JSON object")
                }
                return object
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count = recv(fd, &chunk, chunk.count, 0)
            // A signal that reached this thread (a child process's end, say) is not the daemon's doing.
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw Self.failure(count == 0 ? 0 : errno) }
            buffer += chunk[..<count]
        }
    }

    /// What a socket call that failed with `code` (0: the peer's end of the stream) means.
    private static func failure(_ code: Int32) -> NoDaemon {
        switch code {
        case 0, EPIPE: return NoDaemon(message: "the daemon closed the connection")
        case ECONNRESET: return NoDaemon(message: "the daemon reset the connection (it ended, or closed it unread)")
        case EAGAIN: return NoDaemon(message: "no answer from the daemon within the receive timeout")
        default: return NoDaemon(message: "the connection to the daemon failed: \(String(cString: strerror(code)))")
        }
    }

    /// One request, one reply.
    public func call(_ request: [String: Any]) throws -> [String: Any] {
        try send(request)
        return try receive()
    }
}
