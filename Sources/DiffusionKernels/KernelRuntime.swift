import Synchronization

/// The shared kernel runtime: a thread pool and per-thread scratch memory.
///
/// Every op is a method of this type, in a file per op family
/// (`KernelRuntime+Conv2D.swift`, ...). Ops allocate their outputs, leave their
/// inputs alone, and split work by shape only (see `ThreadPool`), so an image's
/// result never depends on the thread count or on the other images in its batch.
public final class KernelRuntime: @unchecked Sendable {
    public let pool: ThreadPool
    private let scratch: [ScratchBuffer]
    /// Whole-op temporaries (Winograd's transformed tiles, products and filters), reused across calls.
    private let workspace = [ScratchBuffer(), ScratchBuffer(), ScratchBuffer()]
    private let flops = Atomic<Int>(0)

    public init(threadCount: Int) {
        pool = ThreadPool(threadCount: threadCount)
        scratch = (0..<threadCount).map { _ in ScratchBuffer() }
    }

    public var threadCount: Int { pool.threadCount }

    /// Floating-point operations of the matrix products run so far (a multiply-add
    /// counts two), the figure benchmarks divide by time.
    public var floatingPointOperations: Int { flops.load(ordering: .relaxed) }

    func countProduct(_ m: Int, _ n: Int, _ k: Int) {
        flops.wrappingAdd(2 * m * n * k, ordering: .relaxed)
    }

    /// Temporary `slot` (0, 1 or 2) of at least `count` floats, for one op at a time;
    /// reusing it spares the page faults of fresh allocations on every call.
    func workspace(_ slot: Int, count: Int) -> UnsafeMutablePointer<Float> {
        workspace[slot].reserve(count)
    }

    /// Worker `worker`'s scratch memory of at least `count` floats; valid until its next call.
    func scratch(worker: Int, count: Int) -> UnsafeMutablePointer<Float> {
        scratch[worker].reserve(count)
    }
}

/// Growable aligned memory that one thread reuses across ops.
final class ScratchBuffer {
    private var pointer: UnsafeMutablePointer<Float>?
    private var capacity = 0

    func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if let pointer, count <= capacity { return pointer }
        if let pointer { UnsafeMutableRawPointer(pointer).deallocate() }
        capacity = max(count, capacity * 2)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: capacity * MemoryLayout<Float>.stride, alignment: 64)
        let fresh = raw.bindMemory(to: Float.self, capacity: capacity)
        pointer = fresh
        return fresh
    }

    deinit { pointer.map { UnsafeMutableRawPointer($0).deallocate() } }
}
