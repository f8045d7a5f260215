@_exported import DiffusionPluginABI

/// Helpers for plugins written in Swift. Like the header, this links nothing of
/// the host: a plugin built on it still sees diffusiond only through `dfn_host`.

/// DFN_ABI_VERSION of the header this plugin is built against (the macro's
/// casts keep Swift from importing it).
public let pluginABIVersion = UInt32(DFN_ABI_MAJOR) << 16 | UInt32(DFN_ABI_MINOR)

public let pluginOK = Int32(DFN_OK), pluginError = Int32(DFN_ERROR)

/// A failure inside a plugin call, reported to the host as one line.
public struct PluginError: Error, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// Copies `message` into a host error buffer, truncated and NUL-terminated.
public func writeError(_ message: String, into error: UnsafeMutablePointer<CChar>?, size: Int) {
    guard let error, size > 0 else { return }
    let bytes = Array(message.utf8.prefix(size - 1))
    for (i, byte) in bytes.enumerated() { error[i] = CChar(bitPattern: byte) }
    error[bytes.count] = 0
}

/// Runs `body`, turning a thrown `PluginError` into DFN_ERROR and a message.
public func reporting(_ error: UnsafeMutablePointer<CChar>?, _ size: Int, _ body: () throws -> Void) -> Int32 {
    do {
        try body()
        return pluginOK
    } catch let failure as PluginError {
        writeError(failure.message, into: error, size: size)
    } catch let other {
        writeError("\(other)", into: error, size: size)
    }
    return pluginError
}

/// A C string that lives for the rest of the process, for descriptor tables.
public func permanentCString(_ text: String) -> UnsafePointer<CChar> {
    UnsafePointer(strdupOrDie(text))
}

private func strdupOrDie(_ text: String) -> UnsafeMutablePointer<CChar> {
    let bytes = Array(text.utf8CString)
    let copy = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count)
    copy.initialize(from: bytes, count: bytes.count)
    return copy
}

/// A pointer to `value` that lives for the rest of the process.
public func permanent<T>(_ value: T) -> UnsafePointer<T> {
    let pointer = UnsafeMutablePointer<T>.allocate(capacity: 1)
    pointer.initialize(to: value)
    return UnsafePointer(pointer)
}

/// Typed reads of a component's options through the host.
public struct PluginOptions {
    public let host: UnsafePointer<dfn_host>
    public let options: OpaquePointer?

    public init(host: UnsafePointer<dfn_host>, options: OpaquePointer?) {
        self.host = host
        self.options = options
    }

    public func number(_ key: String, default fallback: Double) throws -> Double {
        var value = 0.0
        switch host.pointee.option_number(options, key, &value) {
        case 1: return value
        case 0: return fallback
        default: throw PluginError("\(key) must be a number")
        }
    }

    /// A number, or nil when the key is absent.
    public func optionalNumber(_ key: String) throws -> Double? {
        var value = 0.0
        switch host.pointee.option_number(options, key, &value) {
        case 1: return value
        case 0: return nil
        default: throw PluginError("\(key) must be a number")
        }
    }

    /// A string, or nil when the key is absent.
    public func optionalString(_ key: String) throws -> String? {
        var value: UnsafePointer<CChar>?
        switch host.pointee.option_string(options, key, &value) {
        case 1: return String(cString: value!)
        case 0: return nil
        default: throw PluginError("\(key) must be a string")
        }
    }

    /// A list of numbers, empty when absent.
    public func numbers(_ key: String) throws -> [Double] {
        let count = host.pointee.option_numbers(options, key, nil, 0)
        guard count >= 0 else { throw PluginError("\(key) must be a list of numbers") }
        var values = [Double](repeating: 0, count: Int(count))
        _ = host.pointee.option_numbers(options, key, &values, count)
        return values
    }

    /// A number that must lie in `range`: options that scale or divide the
    /// model's output are bounded, so a job cannot ask for a diverging render.
    public func number(_ key: String, default fallback: Double, in range: ClosedRange<Double>) throws -> Double {
        let value = try number(key, default: fallback)
        guard range.contains(value) else {
            throw PluginError("\(key) must lie in [\(range.lowerBound), \(range.upperBound)], not \(value)")
        }
        return value
    }

    public func integer(_ key: String, default fallback: Int) throws -> Int {
        let value = try number(key, default: Double(fallback))
        guard value == value.rounded(), abs(value) < 1e15 else { throw PluginError("\(key) must be a whole number, not \(value)") }
        return Int(value)
    }

    public func bool(_ key: String, default fallback: Bool) throws -> Bool {
        var value: Int32 = 0
        switch host.pointee.option_bool(options, key, &value) {
        case 1: return value != 0
        case 0: return fallback
        default: throw PluginError("\(key) must be true or false")
        }
    }

    /// A string option that must be one of `allowed`.
    public func choice(_ key: String, default fallback: String, allowed: [String]) throws -> String {
        var value: UnsafePointer<CChar>?
        switch host.pointee.option_string(options, key, &value) {
        case 1:
            let text = String(cString: value!)
            guard allowed.contains(text) else {
                throw PluginError("\(key) \"\(text)\" is not supported (one of: \(allowed.joined(separator: ", ")))")
            }
            return text
        case 0: return fallback
        default: throw PluginError("\(key) must be a string")
        }
    }
}
