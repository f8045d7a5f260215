import DiffusionKernels
import DiffusionTestSupport
import Foundation
import Testing
@testable import DiffusionDaemon

/// Where a test's queue lives: a SQLite file, or a database of the test run's
/// own PostgreSQL server (when its binaries are installed).
enum QueueBackend: String, CustomStringConvertible, CaseIterable {
    case sqlite, postgresql
    var description: String { rawValue }

    /// The backends this machine can run; `PostgresQueueTests` is skipped, visibly, without PostgreSQL.
    static let runnable: [QueueBackend] = PostgresServer.available ? [.sqlite, .postgresql] : [.sqlite]

    /// A fresh, empty queue of this backend for `host`, with its temporary directory.
    func store(host: String = "host-a", leaseSeconds: Double = 30) throws -> (JobStore, String) {
        let root = try DaemonProcess.temporaryDirectory()
        switch self {
        case .sqlite:
            return (try JobStore(path: "\(root)/queue.sqlite", hostName: host, leaseSeconds: leaseSeconds), root)
        case .postgresql:
            let url = try PostgresServer.shared.get().createDatabase()
            try url.write(toFile: "\(root)/url", atomically: true, encoding: .utf8)
            return (try JobStore(database: try PostgresDatabase(url: url, hostName: host), hostName: host, leaseSeconds: leaseSeconds), root)
        }
    }

    /// A second connection to the same queue, as another host (or the same host restarted).
    func reopen(_ root: String, host: String = "host-a", leaseSeconds: Double = 30) throws -> JobStore {
        switch self {
        case .sqlite: return try JobStore(path: "\(root)/queue.sqlite", hostName: host, leaseSeconds: leaseSeconds)
        case .postgresql:
            let url = try String(contentsOfFile: "\(root)/url", encoding: .utf8)
            return try JobStore(database: try PostgresDatabase(url: url, hostName: host), hostName: host, leaseSeconds: leaseSeconds)
        }
    }
}

/// The queue's rules, on a real SQLite file and a real PostgreSQL database:
/// order, fairness, retries, crashes, pruning.
@Suite struct JobStoreTests {
    static func add(_ store: JobStore, uid: Int, priority: Int = 0) throws -> Int {
        try store.insert(job: Data("{}".utf8), model: "m", steps: 1, count: 1, priority: priority, owner: Owner(uid: uid), source: "test",
                         maxAttempts: 3).id
    }

    /// Claims the next job as the scheduler would; its lease.
    static func claim(_ store: JobStore, now: Double = JobStore.now()) throws -> Lease? {
        try store.claimNext(now: now) { _ in true }.map { Lease(id: $0.id, token: $0.leaseToken!) }
    }

    /// Takes jobs in the order the worker would, running each to success.
    func drain(_ store: JobStore) throws -> [Int] {
        var order: [Int] = []
        while let lease = try Self.claim(store) {
            #expect(try store.transition(lease.id, from: [.running], to: .succeeded, reason: "test", lease: lease))
            order.append(lease.id)
        }
        return order
    }

    @Test(arguments: QueueBackend.runnable) func priorityThenFairTurnsBetweenOwnersThenAge(_ backend: QueueBackend) throws {
        let (store, root) = try backend.store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a1 = try Self.add(store, uid: 1000), a2 = try Self.add(store, uid: 1000), a3 = try Self.add(store, uid: 1000)
        let b1 = try Self.add(store, uid: 1001), b2 = try Self.add(store, uid: 1001)
        let urgent = try Self.add(store, uid: 1000, priority: 5)
        let c1 = try Self.add(store, uid: 1002)
        // The urgent job first; then owners in turn, each taking their oldest job.
        #expect(try drain(store) == [urgent, b1, c1, a1, b2, a2, a3])
    }

    @Test(arguments: QueueBackend.runnable) func failuresRetryWithBackoffUntilAttemptsRunOut(_ backend: QueueBackend) throws {
        let (store, root) = try backend.store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let id = try Self.add(store, uid: 1)
        for attempt in 1...3 {
            // A backoff hides the job until it has passed.
            let lease = try #require(try Self.claim(store, now: JobStore.now() + 1000))
            #expect(lease.id == id)
            let state = try store.fail(lease, error: "disk trouble", retryable: true, backoffSeconds: 10)
            #expect(state == (attempt < 3 ? .queued : .failed))
            if attempt < 3 {
                #expect(try Self.claim(store) == nil)
                let wait = try #require(try store.earliestBackoff(after: JobStore.now())) - JobStore.now()
                #expect(wait > 10 * pow(2, Double(attempt - 1)) - 1 && wait <= 10 * pow(2, Double(attempt - 1)))
            }
        }
        #expect(try store.record(id)?.attempts == 3)
        // A permanent failure does not retry; retry starts the attempts again.
        #expect(try store.transition(id, from: [.failed], to: .queued, reason: "retry", resetAttempts: true))
        #expect(try store.record(id)?.attempts == 0)
        let lease = try #require(try Self.claim(store))
        #expect(try store.fail(lease, error: "class out of range", retryable: false, backoffSeconds: 10) == .failed)
        #expect(try store.events(of: id).map(\.state) == ["queued", "running", "queued", "running", "queued", "running", "failed", "queued", "running", "failed"])
        if backend == .sqlite { #expect(try JobStoreCheck.integrity(of: "\(root)/queue.sqlite") == "ok") }
    }

    @Test(arguments: QueueBackend.runnable) func interruptedJobsGoBackWithoutUsingAnAttempt(_ backend: QueueBackend) throws {
        let (store, root) = try backend.store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let id = try Self.add(store, uid: 1)
        _ = try Self.claim(store)
        // On a shared queue another host starting leaves it alone (its lease is
        // live); a SQLite file has one host, whatever it is called now.
        let renamed = backend == .sqlite ? "renamed-host" : "host-a"
        if backend == .postgresql {
            #expect(try backend.reopen(root, host: "host-b").requeueAbandoned(poisonAfter: 2, startup: true).queued.isEmpty)
        }
        let restarted = try backend.reopen(root, host: renamed).requeueAbandoned(poisonAfter: 2, startup: true)
        #expect(restarted.queued == [id] && restarted.poisoned.isEmpty)
        let record = try #require(try store.record(id))
        #expect(record.state == .queued && record.attempts == 0)
    }

    /// The dead-letter rule: running at two unclean exits in a row fails the job;
    /// a clean stop in between starts the count again.
    @Test(arguments: QueueBackend.runnable) func aJobRunningAtTwoCrashesInARowIsFailedAsPoison(_ backend: QueueBackend) throws {
        let (store, root) = try backend.store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let id = try Self.add(store, uid: 1)
        func crash() throws -> (queued: [Int], poisoned: [Int]) {
            _ = try Self.claim(store)
            return try store.requeueAbandoned(poisonAfter: 2, startup: true)
        }
        #expect(try crash().queued == [id])
        let lease = try #require(try Self.claim(store))
        try store.transition(id, from: [.running], to: .queued, reason: "the daemon stopped; queued again", lease: lease)
        #expect(try crash().queued == [id])
        #expect(try crash().poisoned == [id])
        let record = try #require(try store.record(id))
        #expect(record.state == .failed)
        #expect(record.error?.contains("exited uncleanly 2 times in a row while this job ran") == true)
        #expect(try store.events(of: id).last?.state == "failed")
        // retry gives it a fresh count
        try store.transition(id, from: [.failed], to: .queued, reason: "retried", resetAttempts: true)
        #expect(try crash().queued == [id])
        let never = try store.requeueAbandoned(poisonAfter: 0, startup: true)
        #expect(never.poisoned.isEmpty)
    }

    /// Any limit a client sends reuses one statement: the daemon's memory does
    /// not grow with the number of distinct requests.
    @Test(arguments: QueueBackend.runnable) func listLimitsShareOneStatement(_ backend: QueueBackend) throws {
        let (store, root) = try backend.store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        for _ in 0..<3 { _ = try Self.add(store, uid: 1) }
        _ = try store.list(states: [.queued], ownerUID: 1, limit: 1)
        let cached = store.cachedStatements
        for limit in 1...500 {
            #expect(try store.list(states: [.queued], ownerUID: 1, limit: limit).count == min(limit, 3))
        }
        #expect(try store.list(states: [.queued], ownerUID: 1, limit: nil).count == 3)
        #expect(store.cachedStatements == cached)
    }

    @Test(arguments: QueueBackend.runnable) func historyIsPrunedByCountAndAge(_ backend: QueueBackend) throws {
        let (store, root) = try backend.store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let ids = try (0..<5).map { _ in try Self.add(store, uid: 1) }
        let waiting = try Self.add(store, uid: 1)
        try store.transition(waiting, from: [.queued], to: .held, reason: "test")
        #expect(try drain(store) == ids)
        #expect(try store.prune(keepJobs: 2, keepDays: 30).sorted() == Array(ids.prefix(3)))
        #expect(try store.list(states: [], ownerUID: nil, limit: nil).map(\.id) == [waiting, ids[4], ids[3]])
        #expect(try store.prune(keepJobs: 100, keepDays: 0).sorted() == [ids[3], ids[4]])
        #expect(try store.events(of: ids[4]).isEmpty)
    }

    /// Leases and fencing on either engine: a host whose lease expired and was
    /// taken can no longer end the job, checkpoint it or renew it.
    @Test(arguments: QueueBackend.runnable) func aStaleHostsWritesAreRefused(_ backend: QueueBackend) throws {
        let (hostA, root) = try backend.store(host: "host-a", leaseSeconds: 1)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let hostB = try backend.reopen(root, host: "host-b", leaseSeconds: 1)
        let id = try Self.add(hostA, uid: 1)
        let stale = try #require(try Self.claim(hostA))
        #expect(try hostA.writeCheckpoint(Data("a".utf8), lease: stale))
        #expect(try hostB.requeueAbandoned(poisonAfter: 0, startup: false).queued.isEmpty)
        #expect(try hostA.renew([(stale, 3)]).lost.isEmpty)
        usleep(1_300_000)
        #expect(try hostB.requeueAbandoned(poisonAfter: 0, startup: false).queued == [id])
        let fresh = try #require(try Self.claim(hostB))
        #expect(fresh.token > stale.token)
        #expect(try hostA.renew([(stale, 4)]).lost == [id])
        #expect(try !hostA.writeCheckpoint(Data("late".utf8), lease: stale))
        #expect(try !hostA.transition(id, from: [.running], to: .succeeded, reason: "stale", lease: stale))
        #expect(try hostA.fail(stale, error: "stale", retryable: true, backoffSeconds: 1) == nil)
        // The new holder's checkpoint is the one that was there: A's late one never landed.
        #expect(try hostB.checkpoint(of: id) == Data("a".utf8))
        #expect(try hostB.transition(id, from: [.running], to: .succeeded, reason: "done", lease: fresh))
        #expect(try hostB.checkpoint(of: id) == nil)
        let record = try #require(try hostA.record(id))
        #expect(record.state == .succeeded && record.leaseHost == "host-b" && record.leaseToken == fresh.token)
    }

    /// Receipts are of one host's spool: the same file name and contents in
    /// two hosts' spools are two jobs.
    @Test(arguments: QueueBackend.runnable) func spoolReceiptsBelongToTheirHost(_ backend: QueueBackend) throws {
        let (hostA, root) = try backend.store(host: "host-a")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let hostB = try backend.reopen(root, host: "host-b")
        let job = try hostA.insert(job: Data("{}".utf8), model: "m", steps: 1, count: 1, priority: 0, owner: Owner(uid: 1),
                                   source: "spool job.json", maxAttempts: 1, receipt: ("job.json", "h"))
        #expect(try hostA.receipt(name: "job.json", hash: "h") == job.id)
        #expect(try hostB.receipt(name: "job.json", hash: "h") == nil)
        try hostB.dropReceipts(keeping: [])
        #expect(try hostA.receipt(name: "job.json", hash: "h") == job.id)
    }
}

/// What only a database server shared by hosts can show.
@Suite(.enabled(if: PostgresServer.available, "needs PostgreSQL's server (Debian's postgresql; make test installs it)"))
struct PostgresQueueTests {
    /// Hosts claiming at once from one queue never take the same job
    /// (FOR UPDATE SKIP LOCKED), and take all of them.
    @Test func concurrentClaimsTakeEachJobOnce() throws {
        let (first, root) = try QueueBackend.postgresql.store(host: "host-0")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let ids = try (0..<120).map { _ in try JobStoreTests.add(first, uid: 1) }
        // Each connection is used by its one thread.
        nonisolated(unsafe) let hosts = try (0..<4).map { try QueueBackend.postgresql.reopen(root, host: "host-\($0)") }
        let claimed = Locked<[Int]>([])
        DispatchQueue.concurrentPerform(iterations: hosts.count) { index in
            while let lease = try? JobStoreTests.claim(hosts[index]) {
                _ = try? hosts[index].transition(lease.id, from: [.running], to: .succeeded, reason: "test", lease: lease)
                claimed.withLock { $0.append(lease.id) }
            }
        }
        #expect(claimed.withLock { $0 }.sorted() == ids)
    }

    /// Hosts starting together on an empty database: one creates the schema, the others find it.
    @Test func hostsStartingAtOnceMigrateOnce() throws {
        let url = try PostgresServer.shared.get().createDatabase()
        let errors = Locked<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 4) { index in
            do {
                _ = try JobStore(database: try PostgresDatabase(url: url, hostName: "host-\(index)"), hostName: "host-\(index)", leaseSeconds: 30)
            } catch {
                errors.withLock { $0.append("\(error)") }
            }
        }
        #expect(errors.withLock { $0 }.isEmpty)
    }

    /// A server restart cuts the connection; the next call after the backoff reconnects by itself.
    @Test func aRestartedServerIsReconnected() throws {
        let server = try PostgresServer()
        defer { server.destroy() }
        let url = try server.createDatabase()
        let store = try JobStore(database: try PostgresDatabase(url: url, hostName: "host-a"), hostName: "host-a", leaseSeconds: 30)
        let id = try JobStoreTests.add(store, uid: 1)
        try server.restart()
        var error: DiffusionError?
        do { _ = try store.record(id) } catch let failure as DiffusionError { error = failure }
        #expect(error?.transient == true, "\(String(describing: error))")
        let deadline = Date().addingTimeInterval(15)
        var record: JobRecord?
        while record == nil && Date() < deadline {
            record = try? store.record(id)
            if record == nil { usleep(100_000) }
        }
        #expect(record?.id == id)
    }
}
