import Foundation

/// A value bound to a statement's `?` or read from a row, in either engine.
enum DatabaseValue: Equatable {
    case null, integer(Int64), real(Double), text(String), blob(Data)
}

/// One row of a result, read by column position.
struct DatabaseRow {
    let values: [DatabaseValue]
    func int(_ column: Int) -> Int {
        switch values[column] {
        case .integer(let value): return Int(value)
        case .real(let value): return Int(value)
        default: return 0
        }
    }
    func optionalInt(_ column: Int) -> Int? {
        if case .null = values[column] { return nil }
        return int(column)
    }
    func double(_ column: Int) -> Double? {
        switch values[column] {
        case .real(let value): return value
        case .integer(let value): return Double(value)
        default: return nil
        }
    }
    func string(_ column: Int) -> String? {
        if case .text(let value) = values[column] { return value }
        return nil
    }
    func data(_ column: Int) -> Data? {
        switch values[column] {
        case .blob(let value): return value
        case .text(let value): return Data(value.utf8)
        default: return nil
        }
    }
}

/// What `JobStore` needs of an engine: statements with `?` placeholders in the
/// SQL both engines speak, transactions, and the few things they say
/// differently. One connection, used from one thread.
protocol QueueDatabase: AnyObject {
    /// Runs one statement with `arguments` bound to its `?`s and returns its rows.
    @discardableResult
    func query(_ sql: String, _ arguments: [DatabaseValue]) throws -> [DatabaseRow]
    /// Statement texts kept (prepared, or rewritten for the engine): a fixed
    /// set, since every value is bound, never spliced into the text.
    var cachedStatements: Int { get }
    /// Rows the last INSERT, UPDATE or DELETE changed.
    var changes: Int { get }
    /// `body` in one transaction that holds the write lock, rolled back if it throws.
    func write<T>(_ body: () throws -> T) throws -> T

    /// Migrates to the newest schema (its versioned migrations); safe when several hosts start at once.
    func migrate() throws
    /// Whether other hosts may use the queue too (their leases are theirs).
    var isShared: Bool { get }
    /// Appended to the SELECT that picks a job to claim or a row to change: a
    /// row another host has locked is skipped (PostgreSQL's FOR UPDATE SKIP
    /// LOCKED), or nothing where the write lock is already the whole file's.
    var claimLock: String { get }
    var rowLock: String { get }
    /// The engine's clock in seconds since 1970, as SQL: leases are measured
    /// on the one clock every host shares.
    var clock: String { get }
    /// The next fencing token (inside a write): larger than every token before.
    func nextLeaseToken() throws -> Int
    /// Tells every host listening that the queue changed (inside a write).
    func notifyQueueChanged() throws
    var description: String { get }
}

extension QueueDatabase {
    @discardableResult
    func query(_ sql: String) throws -> [DatabaseRow] { try query(sql, []) }
}
