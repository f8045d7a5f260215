import DiffusionKernels
import Foundation

/// Reads typed values out of a config dictionary and remembers which keys it saw.
struct ConfigReader {
    let keys: [String: Any]
    let source: String
    private var seen: Set<String> = []

    init(keys: [String: Any], source: String) {
        self.keys = keys
        self.source = source
    }

    /// The raw value, or nil when absent.
    mutating func value(_ key: String) -> Any? {
        seen.insert(key)
        return keys[key]
    }

    func unsupported(_ key: String, _ value: Any) -> DiffusionError {
        DiffusionError("\(source): \(key) = \(Self.render(value)) is not supported by this runtime")
    }

    mutating func int(_ key: String) throws -> Int? {
        guard let raw = value(key), !(raw is NSNull) else { return nil }
        guard let number = raw as? NSNumber, !Self.isBool(number), number.doubleValue == Double(number.intValue) else {
            throw DiffusionError("\(source): \(key) must be an integer, not \(Self.render(raw))")
        }
        return number.intValue
    }

    mutating func float(_ key: String) throws -> Float? {
        guard let raw = value(key), !(raw is NSNull) else { return nil }
        guard let number = raw as? NSNumber, !Self.isBool(number) else {
            throw DiffusionError("\(source): \(key) must be a number, not \(Self.render(raw))")
        }
        return number.floatValue
    }

    mutating func bool(_ key: String) throws -> Bool? {
        guard let raw = value(key), !(raw is NSNull) else { return nil }
        guard let number = raw as? NSNumber, Self.isBool(number) else {
            throw DiffusionError("\(source): \(key) must be true or false, not \(Self.render(raw))")
        }
        return number.boolValue
    }

    mutating func ints(_ key: String) throws -> [Int]? {
        guard let raw = value(key), !(raw is NSNull) else { return nil }
        guard let list = raw as? [NSNumber], list.allSatisfy({ !Self.isBool($0) && $0.intValue > 0 }) else {
            throw DiffusionError("\(source): \(key) must be a list of positive integers, not \(Self.render(raw))")
        }
        return list.map(\.intValue)
    }

    mutating func strings(_ key: String) throws -> [String]? {
        guard let raw = value(key), !(raw is NSNull) else { return nil }
        guard let list = raw as? [String] else {
            throw DiffusionError("\(source): \(key) must be a list of strings, not \(Self.render(raw))")
        }
        return list
    }

    /// Accepts `key` when absent (nil) or equal to one of `allowed` (that value).
    @discardableResult
    mutating func require(_ key: String, oneOf allowed: [String]) throws -> String? {
        guard let raw = value(key), !(raw is NSNull) else { return nil }
        guard let text = raw as? String, allowed.contains(text) else { throw unsupported(key, raw) }
        return text
    }

    func rejectUnknownKeys() throws {
        if let unknown = keys.keys.sorted().first(where: { !$0.hasPrefix("_") && !seen.contains($0) }) {
            throw DiffusionError("\(source): unknown key \(unknown) = \(Self.render(keys[unknown]!)); this runtime cannot honour it")
        }
    }

    /// JSONSerialization returns `true` and `false` as NSNumbers of C type `char`.
    private static func isBool(_ number: NSNumber) -> Bool {
        String(cString: number.objCType) == "c"
    }

    static func render(_ value: Any) -> String {
        if value is NSNull { return "null" }
        if let text = value as? String { return "\"\(text)\"" }
        if let data = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys]),
           let text = String(data: data, encoding: .utf8)
        { return text }
        return "\(value)"
    }
}

extension ConfigReader {
    /// A reader of config.json's object.
    init(json data: Data, source: String) throws {
        guard let object = try? JSONSerialization.jsonObject(with: data), let keys = object as? [String: Any] else {
            throw DiffusionError("\(source): not a JSON object")
        }
        self.init(keys: keys, source: source)
    }

    /// `sample_size` as `[height, width]`: one number for both, or a pair (nil when absent or null).
    mutating func sampleSize() throws -> [Int]? {
        guard let size = value("sample_size"), !(size is NSNull) else { return nil }
        if let one = (size as? NSNumber)?.intValue { return [one, one] }
        if let pair = size as? [NSNumber], pair.count == 2 { return pair.map(\.intValue) }
        throw unsupported("sample_size", size)
    }

    /// A list of names, each one of `Name`'s values (block types).
    mutating func names<Name: RawRepresentable>(_ key: String) throws -> [Name]? where Name.RawValue == String {
        try strings(key)?.map { name in
            guard let value = Name(rawValue: name) else { throw unsupported(key, name) }
            return value
        }
    }

    /// Accepts `key` when absent, null, or equal to `value`: a setting this runtime
    /// implements at its default only.
    mutating func requireDefault(_ key: String, _ value: Any) throws {
        guard let raw = self.value(key), !(raw is NSNull) else { return }
        if let expected = value as? NSNumber, let number = raw as? NSNumber, number == expected { return }
        if let expected = value as? String, let text = raw as? String, text == expected { return }
        throw unsupported(key, raw)
    }

    /// Marks keys read that change nothing at inference (dropout rates, token ids, bookkeeping).
    mutating func ignore(_ names: [String]) {
        for name in names { _ = value(name) }
    }
}
