import DiffusionKernels

/// What the render pipeline asks of a model: its output for noisy samples.
public protocol DenoisingModel: AnyObject, Sendable {
    /// One image's shape `[channels, height, width]`.
    var sampleShape: [Int] { get }
    /// The number of class labels it takes, the null label included; nil when unconditional.
    var classCount: Int? { get }
    /// The model output for `sample` `[batch, c, h, w]`; each image has its own
    /// timestep, its noise level ᾱ at that timestep, and (for class-conditional
    /// models) its label.
    func predict(_ sample: Tensor, timesteps: [Float], alphasCumprod: [Double], classLabels: [Int]?,
                 on runtime: KernelRuntime) throws -> Tensor
}

/// A classifier of noisy samples, for classifier guidance.
public protocol NoisyClassifier: AnyObject, Sendable {
    /// ∇ₓ log p(y | x_t) for each image of `sample` with its own label.
    func logProbabilityGradient(_ sample: Tensor, timesteps: [Float], alphasCumprod: [Double], labels: [Int],
                                on runtime: KernelRuntime) throws -> Tensor
}

extension UNet2DModel: DenoisingModel {
    public var sampleShape: [Int] { config.sampleShape }

    public var classCount: Int? { config.numClassEmbeds }

    public func predict(_ sample: Tensor, timesteps: [Float], alphasCumprod: [Double], classLabels: [Int]?,
                        on runtime: KernelRuntime) throws -> Tensor
    {
        try forward(sample, timesteps: timesteps, classLabels: classLabels, on: runtime)
    }
}
