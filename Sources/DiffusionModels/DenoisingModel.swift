import DiffusionKernels

/// What the render pipeline asks of a model: its output for noisy samples.
public protocol DenoisingModel: AnyObject, Sendable {
    /// One image's shape `[channels, height, width]`.
    var sampleShape: [Int] { get }
    /// The number of class labels it takes, the null label included; nil when unconditional.
    var classCount: Int? { get }
    /// The model output for `sample` `[batch, c, h, w]`; each image has its own
    /// timestep, its noise level ᾱ at that timestep, and (for class-conditional
    /// models) its label or (for text-conditioned ones) its text states
    /// `[batch, dim, tokens, 1]`.
    func predict(_ sample: Tensor, timesteps: [Float], alphasCumprod: [Double], classLabels: [Int]?, context: Tensor?,
                 on runtime: KernelRuntime) throws -> Tensor
}

/// A denoiser's config.json: what planning reads of it, and the model it builds.
protocol DenoiserConfig: Sendable {
    /// One sample's shape `[channels, height, width]` at the model's own size.
    var sampleShape: [Int] { get }
    var outputChannels: Int { get }
    var classCount: Int? { get }
    /// Its class input, labels or a level (nil: it takes none).
    var classInput: ClassEmbeddingType? { get }
    /// The width of the text states it reads (nil: it reads none).
    var contextDim: Int? { get }
    /// Sample sides must be multiples of this.
    var downsamplingFactor: Int { get }
    func makeModel(weights: any WeightSource) throws -> any DenoisingModel
}

extension UNet2DConfig: DenoiserConfig {
    var outputChannels: Int { outChannels }
    var classCount: Int? { numClassEmbeds }
    var classInput: ClassEmbeddingType? { classEmbedding }
    var contextDim: Int? { nil }
    var downsamplingFactor: Int { 1 << (blockOutChannels.count - 1) }
    func makeModel(weights: any WeightSource) throws -> any DenoisingModel { try UNet2DModel(config: self, weights: weights) }
}

extension UNet2DConditionConfig: DenoiserConfig {
    var outputChannels: Int { outChannels }
    var classCount: Int? { if case .table(let count)? = classEmbedding { count } else { nil } }
    var classInput: ClassEmbeddingType? { classEmbedding }
    var contextDim: Int? { crossAttentionDim }
    func makeModel(weights: any WeightSource) throws -> any DenoisingModel {
        try UNet2DConditionModel(config: self, weights: weights)
    }
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
                        context: Tensor?, on runtime: KernelRuntime) throws -> Tensor
    {
        guard context == nil else { throw DiffusionError("this model is not text-conditioned: it takes no prompt") }
        return try forward(sample, timesteps: timesteps, classLabels: classLabels, on: runtime)
    }
}

extension UNet2DConditionModel: DenoisingModel {
    public var sampleShape: [Int] { config.sampleShape }

    public var classCount: Int? { if case .table(let count)? = config.classEmbedding { count } else { nil } }

    public func predict(_ sample: Tensor, timesteps: [Float], alphasCumprod: [Double], classLabels: [Int]?,
                        context: Tensor?, on runtime: KernelRuntime) throws -> Tensor
    {
        guard let context else { throw DiffusionError("this model is text-conditioned: give a prompt") }
        return try forward(sample, timesteps: timesteps, context: context, classLabels: classLabels, on: runtime)
    }
}
