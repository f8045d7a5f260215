/// What one job may ask for; the daemon reads these from its configuration.
public struct RenderLimits: Sendable {
    public var maxSteps = 1000
    public var maxCount = 100
    /// Pixels per image (height x width).
    public var maxPixels = 512 * 512

    public init() {}
}
