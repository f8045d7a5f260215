/// Why a model could not be loaded; each reads as one line that says what to fix.
public struct ModelError: Error, CustomStringConvertible, Equatable {
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}
