import CAffinity
import CBLASCore
import COpenBLAS
import Foundation
import Synchronization

/// The runtime's only owner of compute threads.
///
/// OpenBLAS is switched to one thread when a pool starts, so BLAS calls run on
/// whichever pool thread makes them and the machine is never oversubscribed.
/// Work is split into tasks whose boundaries depend only on tensor shapes, never
/// on the thread count: a task computes the same bits whichever thread runs it,
/// which is what makes results identical for every thread count.
public final class ThreadPool: @unchecked Sendable {
    /// Threads that run tasks, the caller of `parallelFor` included.
    public let threadCount: Int
    private let shared: SharedWork

    /// Starts `threadCount - 1` worker threads; the caller is the last one.
    public init(threadCount: Int) {
        precondition(threadCount >= 1, "a thread pool needs at least one thread")
        self.threadCount = threadCount
        _ = dfn_blas_select_core()
        openblas_set_num_threads(1)
        let shared = SharedWork()
        self.shared = shared
        let cpus = Self.allowedCPUs()
        for worker in 1..<threadCount {
            // Worker i keeps to CPU (n − i) of the n this process may use, so that two
            // workers never queue on one core while another idles; the caller floats.
            let cpu = threadCount <= cpus.count ? cpus[cpus.count - worker] : nil
            let thread = Thread {
                if let cpu { Self.pinCurrentThread(to: cpu) }
                shared.workerLoop(worker: worker)
            }
            thread.name = "diffusion-compute-\(worker)"
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    deinit { shared.shutDown() }

    /// The CPUs this process may run on (its affinity mask), in order.
    static func allowedCPUs() -> [Int32] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let count = dfn_allowed_cpus(&cpus, Int32(cpus.count))
        return Array(cpus.prefix(Int(max(count, 0))))
    }

    static func pinCurrentThread(to cpu: Int32) { _ = dfn_pin_current_thread(cpu) }

    /// Runs `body(task, worker)` for every task in `0..<count` and returns when all
    /// are done. `worker` (in `0..<threadCount`) names the thread, for per-thread
    /// scratch memory. Calls must not nest.
    public func parallelFor(_ count: Int, _ body: (_ task: Int, _ worker: Int) -> Void) {
        if threadCount == 1 || count <= 1 {
            for task in 0..<count { body(task, 0) }
            return
        }
        withoutActuallyEscaping(body) { shared.run($0, count: count, helpers: threadCount - 1) }
    }
}

/// The state the caller and the worker threads share; workers keep it alive.
private final class SharedWork: @unchecked Sendable {
    private let lock = NSCondition()
    private var generation = 0
    private var busyHelpers = 0
    private var shuttingDown = false
    private var body: ((Int, Int) -> Void)?
    private var taskCount = 0
    private let nextTask = Atomic<Int>(0)

    func run(_ body: @escaping (Int, Int) -> Void, count: Int, helpers: Int) {
        lock.lock()
        self.body = body
        taskCount = count
        nextTask.store(0, ordering: .relaxed)
        busyHelpers = helpers
        generation &+= 1
        lock.broadcast()
        lock.unlock()

        runTasks(body, worker: 0)

        lock.lock()
        while busyHelpers > 0 { lock.wait() }
        self.body = nil
        lock.unlock()
    }

    func shutDown() {
        lock.lock()
        shuttingDown = true
        lock.broadcast()
        lock.unlock()
    }

    func workerLoop(worker: Int) {
        var seen = 0
        while true {
            lock.lock()
            while generation == seen && !shuttingDown { lock.wait() }
            if shuttingDown {
                lock.unlock()
                return
            }
            seen = generation
            lock.unlock()

            runPublishedTasks(worker: worker)

            lock.lock()
            busyHelpers -= 1
            if busyHelpers == 0 { lock.broadcast() }
            lock.unlock()
        }
    }

    /// Runs the published body in a frame of its own, so that the worker's reference
    /// to it is gone before the caller learns the work is done.
    @inline(never)
    private func runPublishedTasks(worker: Int) {
        lock.lock()
        let body = self.body!
        lock.unlock()
        runTasks(body, worker: worker)
    }

    private func runTasks(_ body: (Int, Int) -> Void, worker: Int) {
        while true {
            let task = nextTask.wrappingAdd(1, ordering: .relaxed).oldValue
            if task >= taskCount { return }
            body(task, worker)
        }
    }
}
