import CSocket
import Foundation

/// One client on the socket: JSON Lines in, JSON Lines out (docs/protocol.md).
///
/// A line longer than the frame limit is answered with one error and skipped up
/// to its newline, so the connection stays usable; the peer's uid is read once,
/// with SO_PEERCRED, when it connects.
final class ClientSession {
    let connection: PipeConnection
    let uid: uid_t
    let pid: pid_t
    private var framer: LineFramer
    /// Jobs this client watches.
    var watching: Set<Int> = []
    /// When the client last sent anything (the loop's clock, ms), for the idle timeout.
    var lastActivity: UInt64 = 0
    /// Bytes of an unfinished line held for this client (counted against the daemon's total).
    var bufferedBytes: Int { framer.bufferedBytes }

    /// Forgets the unfinished line (the connection is being cut off).
    func dropBuffer() { framer.reset() }

    /// Progress events are skipped for a client this far behind (end events never are).
    static let slowClientBytes = 1 << 20

    init?(connection: PipeConnection, maxFrameBytes: Int) {
        var uid = uid_t(), gid = gid_t(), pid = pid_t()
        guard let fd = connection.fileDescriptor, dfn_peer_credentials(fd, &uid, &gid, &pid) == 0 else { return nil }
        self.connection = connection
        self.uid = uid
        self.pid = pid
        framer = LineFramer(maxLineBytes: maxFrameBytes)
    }

    /// Splits `bytes` into lines and hands each complete one to `handle`;
    /// `oversize` is called once for each line over the limit.
    func feed(_ bytes: UnsafeRawBufferPointer, handle: (Data) -> Void, oversize: () -> Void) {
        framer.feed(bytes, handle: handle, oversize: oversize)
    }

    func send(_ object: [String: Any]) {
        guard let line = Self.line(object) else { return }
        connection.write(line)
    }

    /// One reply as the bytes of its line (shared when many clients get the same event).
    static func line(_ object: [String: Any]) -> Data? {
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes]) else { return nil }
        data.append(UInt8(ascii: "\n"))
        return data
    }

    var isBehind: Bool { connection.pendingWriteBytes > Self.slowClientBytes }
}

/// JSON Lines framing: bytes in, complete lines out. A line longer than
/// `maxLineBytes` is reported once and skipped up to its newline, so the
/// stream stays usable; blank lines are skipped.
public struct LineFramer {
    private var buffer: [UInt8] = []
    private var discarding = false
    public let maxLineBytes: Int

    public init(maxLineBytes: Int) { self.maxLineBytes = maxLineBytes }

    /// Bytes of the unfinished line held.
    public var bufferedBytes: Int { buffer.count }

    public mutating func reset() {
        buffer = []
        discarding = false
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer, handle: (Data) -> Void, oversize: () -> Void) {
        var start = 0
        for (index, byte) in bytes.enumerated() where byte == UInt8(ascii: "\n") {
            if discarding {
                discarding = false
            } else if buffer.count + index - start > maxLineBytes {
                buffer.removeAll(keepingCapacity: true)
                oversize()
            } else {
                buffer.append(contentsOf: bytes[start..<index])
                let line = Data(buffer)
                buffer.removeAll(keepingCapacity: true)
                if !line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { handle(line) }
            }
            start = index + 1
        }
        guard !discarding else { return }
        buffer.append(contentsOf: bytes[start...])
        if buffer.count > maxLineBytes {
            buffer.removeAll()
            discarding = true
            oversize()
        }
    }
}
