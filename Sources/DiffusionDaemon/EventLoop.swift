import CUV
import DiffusionKernels
import Foundation

/// The daemon's one libuv loop, and Swift owners for the handles it uses.
///
/// Every handle is a `LoopHandle`: its uv handle's `data` holds a retained
/// reference to the Swift object, released by the close callback, which then
/// frees the handle's memory. `closeAllHandles()` walks the loop and closes whatever is
/// still open, so at exit `uv_loop_close` finds no handle left.
final class EventLoop {
    let loop: UnsafeMutablePointer<uv_loop_t>

    init() throws {
        loop = .allocate(capacity: 1)
        let status = uv_loop_init(loop)
        guard status == 0 else { throw loopError("uv_loop_init", status) }
    }

    func run() { uv_run(loop, UV_RUN_DEFAULT) }

    /// Starts closing every handle still open (callable from inside the loop);
    /// `run()` returns once their close callbacks have run. Returns the count.
    @discardableResult
    func closeAllHandles() -> Int {
        var closed = 0
        uv_walk(loop, { handle, counter in
            guard let handle, uv_is_closing(handle) == 0 else { return }
            counter!.assumingMemoryBound(to: Int.self).pointee += 1
            LoopHandle.owner(of: handle).close()
        }, &closed)
        return closed
    }

    /// After `run()` returned: closes any handle left, then the loop itself;
    /// true when no handle was left open.
    func close() -> Bool {
        closeAllHandles()
        uv_run(loop, UV_RUN_DEFAULT)
        let clean = uv_loop_close(loop) == 0
        if clean { loop.deallocate() }
        return clean
    }

    /// The loop's cached time, in milliseconds.
    var now: UInt64 { uv_now(loop) }
}

/// A libuv status (a negated errno) as the project's error, with the call that returned it.
func loopError(_ call: String, _ status: Int32) -> DiffusionError {
    DiffusionError.system(call, errno: -status)
}

class LoopHandle {
    let raw: UnsafeMutableRawPointer
    var handle: UnsafeMutablePointer<uv_handle_t> { raw.assumingMemoryBound(to: uv_handle_t.self) }
    private(set) var isClosed = false

    init(type: uv_handle_type) {
        raw = UnsafeMutableRawPointer.allocate(byteCount: uv_handle_size(type), alignment: 16)
    }

    /// Call once the uv handle is initialized: from now on the loop owns a reference.
    func adopt() { handle.pointee.data = Unmanaged.passRetained(self).toOpaque() }

    static func owner(of handle: UnsafeMutablePointer<uv_handle_t>) -> LoopHandle {
        Unmanaged<LoopHandle>.fromOpaque(handle.pointee.data).takeUnretainedValue()
    }

    func close() {
        guard !isClosed, uv_is_closing(handle) == 0 else { return }
        isClosed = true
        uv_close(handle) { handle in
            let owner = Unmanaged<LoopHandle>.fromOpaque(handle!.pointee.data).takeRetainedValue()
            owner.didClose()
            owner.raw.deallocate()
        }
    }

    /// Drops closures (and the cycles they hold) once the handle is closed.
    func didClose() {}
}

/// A handle whose libuv callback runs one closure (timers, signals, async, watches).
class LoopActionHandle: LoopHandle {
    private var action: (() -> Void)?

    init(type: uv_handle_type, action: @escaping () -> Void) {
        self.action = action
        super.init(type: type)
    }

    /// Runs the action of the handle a libuv callback was given.
    static func fire(_ handle: UnsafeMutableRawPointer?) {
        (owner(of: handle!.assumingMemoryBound(to: uv_handle_t.self)) as! LoopActionHandle).action?()
    }

    override func didClose() { action = nil }
}

final class LoopTimer: LoopActionHandle {
    init(_ loop: EventLoop, action: @escaping () -> Void) {
        super.init(type: UV_TIMER, action: action)
        uv_timer_init(loop.loop, raw.assumingMemoryBound(to: uv_timer_t.self))
        adopt()
    }

    /// Fires after `milliseconds`, then every `repeatEvery` (0: once). Restarting re-arms it.
    func start(after milliseconds: UInt64, repeatEvery: UInt64 = 0) {
        uv_timer_start(raw.assumingMemoryBound(to: uv_timer_t.self), { LoopActionHandle.fire($0) }, milliseconds, repeatEvery)
    }

    func stop() { uv_timer_stop(raw.assumingMemoryBound(to: uv_timer_t.self)) }
}

final class LoopSignal: LoopActionHandle {
    init(_ loop: EventLoop, signal: Int32, action: @escaping () -> Void) throws {
        super.init(type: UV_SIGNAL, action: action)
        let signalHandle = raw.assumingMemoryBound(to: uv_signal_t.self)
        uv_signal_init(loop.loop, signalHandle)
        adopt()
        let status = uv_signal_start(signalHandle, { handle, _ in LoopActionHandle.fire(handle) }, signal)
        guard status == 0 else { close(); throw loopError("uv_signal_start", status) }
    }
}

/// Wakes the loop from another thread (`send` is the one thread-safe call).
final class LoopAsync: LoopActionHandle, @unchecked Sendable {
    init(_ loop: EventLoop, action: @escaping () -> Void) {
        super.init(type: UV_ASYNC, action: action)
        uv_async_init(loop.loop, raw.assumingMemoryBound(to: uv_async_t.self)) { LoopActionHandle.fire($0) }
        adopt()
    }

    func send() { uv_async_send(raw.assumingMemoryBound(to: uv_async_t.self)) }
}

/// inotify on a directory (through uv_fs_event): only ever a hint to rescan.
final class LoopDirectoryWatch: LoopActionHandle {
    init(_ loop: EventLoop, path: String, action: @escaping () -> Void) throws {
        super.init(type: UV_FS_EVENT, action: action)
        let watch = raw.assumingMemoryBound(to: uv_fs_event_t.self)
        uv_fs_event_init(loop.loop, watch)
        adopt()
        let status = uv_fs_event_start(watch, { handle, _, _, _ in LoopActionHandle.fire(handle) }, path, 0)
        guard status == 0 else { close(); throw loopError("watching \(path)", status) }
    }
}

/// A descriptor another library owns (libpq's socket), watched for reading,
/// or for writing while that library waits to send (a connection being made).
final class LoopPoll: LoopActionHandle {
    let fd: Int32

    init(_ loop: EventLoop, fd: Int32, writable: Bool = false, action: @escaping () -> Void) throws {
        self.fd = fd
        super.init(type: UV_POLL, action: action)
        let status = uv_poll_init(loop.loop, raw.assumingMemoryBound(to: uv_poll_t.self), fd)
        guard status == 0 else { throw loopError("uv_poll_init", status) }
        adopt()
        do { try watch(writable: writable) } catch { close(); throw error }
    }

    /// Watches for readability, or writability, instead of what it watched.
    func watch(writable: Bool) throws {
        let events = Int32((writable ? UV_WRITABLE : UV_READABLE).rawValue)
        let status = uv_poll_start(raw.assumingMemoryBound(to: uv_poll_t.self), events) { handle, _, _ in
            LoopActionHandle.fire(handle)
        }
        guard status == 0 else { throw loopError("uv_poll_start", status) }
    }

    /// Stops watching while the owner may close or replace the descriptor.
    func stop() { uv_poll_stop(raw.assumingMemoryBound(to: uv_poll_t.self)) }
}

/// A listening Unix socket: bound to a path, or adopted from an inherited fd.
final class PipeServer: LoopHandle {
    private var onConnection: ((PipeConnection) -> Void)?
    /// A connection that could not be taken (out of descriptors, say), as an error.
    var onAcceptFailure: ((DiffusionError) -> Void)?
    private let loop: EventLoop

    enum Endpoint {
        case path(String, mode: mode_t)
        case inherited(Int32)
    }

    init(_ loop: EventLoop, endpoint: Endpoint, onConnection: @escaping (PipeConnection) -> Void) throws {
        self.loop = loop
        self.onConnection = onConnection
        super.init(type: UV_NAMED_PIPE)
        let pipe = raw.assumingMemoryBound(to: uv_pipe_t.self)
        uv_pipe_init(loop.loop, pipe, 0)
        adopt()
        switch endpoint {
        case .path(let path, let mode):
            unlink(path)
            // Bind under a restrictive umask, then widen to `mode`: never a window with looser permissions.
            let old = umask(0o177)
            let status = uv_pipe_bind(pipe, path)
            umask(old)
            guard status == 0 else { close(); throw loopError("binding \(path)", status) }
            chmod(path, mode)
        case .inherited(let fd):
            let status = uv_pipe_open(pipe, fd)
            guard status == 0 else { close(); throw loopError("adopting socket fd \(fd)", status) }
        }
        let status = uv_listen(UnsafeMutableRawPointer(pipe).assumingMemoryBound(to: uv_stream_t.self), 128) { server, status in
            guard let server else { return }
            let owner = LoopHandle.owner(of: UnsafeMutableRawPointer(server).assumingMemoryBound(to: uv_handle_t.self)) as! PipeServer
            guard status == 0 else { return owner.failed("listening", status) }
            owner.accept(server)
        }
        guard status == 0 else { close(); throw loopError("listening", status) }
    }

    private func accept(_ server: UnsafeMutablePointer<uv_stream_t>) {
        let connection = PipeConnection(loop)
        let status = uv_accept(server, connection.stream)
        guard status == 0 else {
            connection.close()
            return failed("accepting a client", status)
        }
        onConnection?(connection)
    }

    private func failed(_ call: String, _ status: Int32) { onAcceptFailure?(loopError(call, status)) }

    override func didClose() { onConnection = nil }
}

/// One accepted client: bytes in through `onRead`, out through `write`.
///
/// Backpressure: while more than `maxPendingWriteBytes` of replies wait for a
/// client that does not read them, nothing more is read from it; reading
/// resumes once half of that has drained. A client sending requests and never
/// reading cannot make the daemon queue replies without bound.
final class PipeConnection: LoopHandle {
    var onRead: ((UnsafeRawBufferPointer) -> Void)?
    var onClose: (() -> Void)?
    var stream: UnsafeMutablePointer<uv_stream_t> { raw.assumingMemoryBound(to: uv_stream_t.self) }
    var maxPendingWriteBytes = 1 << 20
    private(set) var readingPaused = false
    /// Why the connection closed when it was not the client's end of stream: a libuv status.
    private(set) var failure: Int32 = 0

    init(_ loop: EventLoop) {
        super.init(type: UV_NAMED_PIPE)
        uv_pipe_init(loop.loop, raw.assumingMemoryBound(to: uv_pipe_t.self), 0)
        adopt()
    }

    var fileDescriptor: Int32? {
        var fd = uv_os_fd_t()
        return uv_fileno(handle, &fd) == 0 ? fd : nil
    }

    /// Bytes queued for the client but not yet written (a slow reader's backlog).
    var pendingWriteBytes: Int { uv_stream_get_write_queue_size(stream) }

    func startReading() {
        readingPaused = false
        uv_read_start(stream, { _, suggested, buffer in
            buffer!.pointee.base = malloc(suggested)?.assumingMemoryBound(to: CChar.self)
            buffer!.pointee.len = buffer!.pointee.base == nil ? 0 : suggested
        }, { stream, count, buffer in
            let owner = LoopHandle.owner(of: UnsafeMutableRawPointer(stream!).assumingMemoryBound(to: uv_handle_t.self)) as! PipeConnection
            if count > 0 {
                owner.onRead?(UnsafeRawBufferPointer(start: buffer!.pointee.base, count: count))
                if !owner.isClosed && owner.pendingWriteBytes > owner.maxPendingWriteBytes {
                    uv_read_stop(owner.stream)
                    owner.readingPaused = true
                }
            } else if count < 0 {
                if count != Int(UV_EOF.rawValue) { owner.failure = Int32(count) }
                owner.close()
            }
            free(buffer!.pointee.base)
        })
    }

    func write(_ data: Data) {
        guard !isClosed, !data.isEmpty else { return }
        let request = UnsafeMutablePointer<uv_write_t>.allocate(capacity: 1)
        let bytes = malloc(data.count)!
        data.copyBytes(to: bytes.assumingMemoryBound(to: UInt8.self), count: data.count)
        request.pointee.data = bytes
        var buffer = uv_buf_init(bytes.assumingMemoryBound(to: CChar.self), UInt32(data.count))
        let status = uv_write(request, stream, &buffer, 1) { request, _ in
            let stream = request!.pointee.handle!
            free(request!.pointee.data)
            request!.deallocate()
            guard let owner = LoopHandle.owner(of: UnsafeMutableRawPointer(stream).assumingMemoryBound(to: uv_handle_t.self))
                    as? PipeConnection
            else { return }
            if owner.readingPaused && !owner.isClosed && owner.pendingWriteBytes <= owner.maxPendingWriteBytes / 2 {
                owner.startReading()
            }
        }
        if status != 0 {
            free(bytes)
            request.deallocate()
            failure = status
            close()
        }
    }

    /// Stops reading and closes once what was written has gone out (a last error line).
    func closeAfterWrites() {
        guard !isClosed else { return }
        uv_read_stop(stream)
        let request = UnsafeMutablePointer<uv_shutdown_t>.allocate(capacity: 1)
        let status = uv_shutdown(request, stream) { request, _ in
            let stream = request!.pointee.handle!
            request!.deallocate()
            (LoopHandle.owner(of: UnsafeMutableRawPointer(stream).assumingMemoryBound(to: uv_handle_t.self)) as? PipeConnection)?.close()
        }
        if status != 0 {
            request.deallocate()
            close()
        }
    }

    override func didClose() {
        let callback = onClose
        onRead = nil
        onClose = nil
        callback?()
    }
}
