import Foundation

/// The settings a component instance is configured with: the model's scheduler
/// config with the job's overrides on top. It remembers which keys a component
/// read, so an override nobody read (a misspelt key) is reported, while keys of
/// the model's own config that another sampler would read are left alone, as
/// diffusers does when one scheduler is built from another's config.
public final class ComponentOptions: @unchecked Sendable {
    private let values: [String: Any]
    private let overrideKeys: Set<String>
    private var read: Set<String> = []
    /// C copies of string values, alive as long as the options.
    private var cStrings: [String: UnsafeMutablePointer<CChar>] = [:]
    private let lock = NSLock()

    public init(modelConfig: [String: Any], overrides: [String: Any]) {
        values = modelConfig.merging(overrides) { $1 }
        overrideKeys = Set(overrides.keys)
    }

    deinit { cStrings.values.forEach { free($0) } }

    func value(_ key: String) -> Any? {
        lock.withLock { _ = read.insert(key) }
        guard let value = values[key], !(value is NSNull) else { return nil }
        return value
    }

    func cString(_ key: String, _ text: String) -> UnsafePointer<CChar> {
        lock.withLock {
            if let existing = cStrings[key] { return UnsafePointer(existing) }
            let copy = strdup(text)!
            cStrings[key] = copy
            return UnsafePointer(copy)
        }
    }

    /// Overrides that no component read, sorted.
    public var unreadOverrides: [String] { lock.withLock { overrideKeys.subtracting(read).sorted() } }
}
