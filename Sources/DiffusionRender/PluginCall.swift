import DiffusionKernels

/// Calls into a plugin with an error buffer: `call` returns whether it succeeded,
/// and a failure becomes one `DiffusionError` prefixed with `component`.
func pluginCall(_ component: String, _ call: (UnsafeMutablePointer<CChar>, Int) -> Bool) throws {
    let capacity = 512
    let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: capacity)
    defer { buffer.deallocate() }
    buffer.initialize(repeating: 0, count: capacity)
    guard call(buffer, capacity) else {
        let message = String(cString: buffer)
        throw DiffusionError("\(component): \(message.isEmpty ? "failed without a reason" : message)")
    }
}
