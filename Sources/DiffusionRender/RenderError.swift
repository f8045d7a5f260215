/// A failure a user or operator can cause, as one line that says what to fix.
public struct RenderError: Error, CustomStringConvertible, Equatable {
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// Calls into a plugin with an error buffer: `call` returns whether it succeeded,
/// and a failure becomes one `RenderError` prefixed with `component`.
func pluginCall(_ component: String, _ call: (UnsafeMutablePointer<CChar>, Int) -> Bool) throws {
    let capacity = 512
    let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: capacity)
    defer { buffer.deallocate() }
    buffer.initialize(repeating: 0, count: capacity)
    guard call(buffer, capacity) else {
        let message = String(cString: buffer)
        throw RenderError("\(component): \(message.isEmpty ? "failed without a reason" : message)")
    }
}
