/// What one job may ask for; the daemon reads these from its configuration.
public struct RenderLimits: Sendable {
    public var maxSteps = 1000
    /// Model evaluations a job's steps may take (Heun, correctors and Langevin
    /// take several a step): 20 per step of the steps limit.
    public var maxEvaluations: Int { 20 * maxSteps }
    public var maxCount = 100
    /// Pixels per image (height x width).
    public var maxPixels = 512 * 512

    public init() {}
}
