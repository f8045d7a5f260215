import Foundation
import Testing
@testable import DiffusionDaemon

/// The queue's rules, on a real SQLite file: order, fairness, retries, pruning.
@Suite struct JobStoreTests {
    func store() throws -> (JobStore, String) {
        let root = try DaemonProcess.temporaryDirectory()
        return (try JobStore(path: "\(root)/queue.sqlite"), root)
    }

    func add(_ store: JobStore, uid: Int, priority: Int = 0) throws -> Int {
        try store.insert(job: Data("{}".utf8), model: "m", steps: 1, count: 1, priority: priority, owner: Owner(uid: uid), source: "test",
                         maxAttempts: 3).id
    }

    /// Takes jobs in the order the worker would, running each to success.
    func drain(_ store: JobStore) throws -> [Int] {
        var order: [Int] = []
        while let next = try store.nextRunnable(now: JobStore.now()) {
            #expect(try store.transition(next.id, from: [.queued], to: .running, reason: "test"))
            try store.transition(next.id, from: [.running], to: .succeeded, reason: "test")
            order.append(next.id)
        }
        return order
    }

    @Test func priorityThenFairTurnsBetweenOwnersThenAge() throws {
        let (store, root) = try store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a1 = try add(store, uid: 1000), a2 = try add(store, uid: 1000), a3 = try add(store, uid: 1000)
        let b1 = try add(store, uid: 1001), b2 = try add(store, uid: 1001)
        let urgent = try add(store, uid: 1000, priority: 5)
        let c1 = try add(store, uid: 1002)
        // The urgent job first; then owners in turn, each taking their oldest job.
        #expect(try drain(store) == [urgent, b1, c1, a1, b2, a2, a3])
    }

    @Test func failuresRetryWithBackoffUntilAttemptsRunOut() throws {
        let (store, root) = try store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let id = try add(store, uid: 1)
        for attempt in 1...3 {
            // A backoff hides the job until it has passed.
            let next = try store.nextRunnable(now: JobStore.now() + 1000)
            #expect(next?.id == id)
            try store.transition(id, from: [.queued], to: .running, reason: "test")
            let state = try store.fail(id, error: "disk trouble", retryable: true, backoffSeconds: 10)
            #expect(state == (attempt < 3 ? .queued : .failed))
            if attempt < 3 {
                #expect(try store.nextRunnable(now: JobStore.now()) == nil)
                let wait = try #require(try store.earliestBackoff(after: JobStore.now())) - JobStore.now()
                #expect(wait > 10 * pow(2, Double(attempt - 1)) - 1 && wait <= 10 * pow(2, Double(attempt - 1)))
            }
        }
        #expect(try store.record(id)?.attempts == 3)
        // A permanent failure does not retry; retry starts the attempts again.
        #expect(try store.transition(id, from: [.failed], to: .queued, reason: "retry", resetAttempts: true))
        #expect(try store.record(id)?.attempts == 0)
        try store.transition(id, from: [.queued], to: .running, reason: "test")
        #expect(try store.fail(id, error: "class out of range", retryable: false, backoffSeconds: 10) == .failed)
        #expect(try store.events(of: id).map(\.state) == ["queued", "running", "queued", "running", "queued", "running", "failed", "queued", "running", "failed"])
        #expect(try store.integrityCheck() == "ok")
    }

    @Test func interruptedJobsGoBackWithoutUsingAnAttempt() throws {
        let (store, root) = try store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let id = try add(store, uid: 1)
        try store.transition(id, from: [.queued], to: .running, reason: "test")
        let restarted = try JobStore(path: "\(root)/queue.sqlite").requeueInterrupted(poisonAfter: 2)
        #expect(restarted.queued == [id] && restarted.poisoned.isEmpty)
        let record = try #require(try store.record(id))
        #expect(record.state == .queued && record.attempts == 0)
    }

    /// The dead-letter rule: running at two unclean exits in a row fails the job;
    /// a clean stop in between starts the count again.
    @Test func aJobRunningAtTwoCrashesInARowIsFailedAsPoison() throws {
        let (store, root) = try store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let id = try add(store, uid: 1)
        func crash() throws -> (queued: [Int], poisoned: [Int]) {
            try store.transition(id, from: [.queued], to: .running, reason: "test")
            return try store.requeueInterrupted(poisonAfter: 2)
        }
        #expect(try crash().queued == [id])
        try store.transition(id, from: [.queued], to: .running, reason: "test")
        try store.transition(id, from: [.running], to: .queued, reason: "the daemon stopped; queued again")
        #expect(try crash().queued == [id])
        #expect(try crash().poisoned == [id])
        let record = try #require(try store.record(id))
        #expect(record.state == .failed)
        #expect(record.error?.contains("exited uncleanly 2 times in a row while this job ran") == true)
        #expect(try store.events(of: id).last?.state == "failed")
        // retry gives it a fresh count
        try store.transition(id, from: [.failed], to: .queued, reason: "retried", resetAttempts: true)
        #expect(try crash().queued == [id])
        let never = try store.requeueInterrupted(poisonAfter: 0)
        #expect(never.poisoned.isEmpty)
    }

    /// Any limit a client sends reuses one prepared statement: the daemon's
    /// memory does not grow with the number of distinct requests.
    @Test func listLimitsShareOneStatement() throws {
        let (store, root) = try store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        for _ in 0..<3 { _ = try add(store, uid: 1) }
        _ = try store.list(states: [.queued], ownerUID: 1, limit: 1)
        let cached = store.cachedStatements
        for limit in 1...500 {
            #expect(try store.list(states: [.queued], ownerUID: 1, limit: limit).count == min(limit, 3))
        }
        #expect(try store.list(states: [.queued], ownerUID: 1, limit: nil).count == 3)
        #expect(store.cachedStatements == cached)
    }

    @Test func historyIsPrunedByCountAndAge() throws {
        let (store, root) = try store()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let ids = try (0..<5).map { _ in try add(store, uid: 1) }
        let waiting = try add(store, uid: 1)
        try store.transition(waiting, from: [.queued], to: .held, reason: "test")
        for id in ids {
            try store.transition(id, from: [.queued], to: .running, reason: "test")
            try store.transition(id, from: [.running], to: .succeeded, reason: "test")
        }
        #expect(try store.prune(keepJobs: 2, keepDays: 30).sorted() == Array(ids.prefix(3)))
        #expect(try store.list(states: [], ownerUID: nil, limit: nil).map(\.id) == [waiting, ids[4], ids[3]])
        #expect(try store.prune(keepJobs: 100, keepDays: 0).sorted() == [ids[3], ids[4]])
        #expect(try store.events(of: ids[4]).isEmpty)
    }
}
