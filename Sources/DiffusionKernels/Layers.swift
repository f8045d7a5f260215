/// Weights of the layers the ops run, in PyTorch's own layouts, so that a
/// checkpoint's tensors are used as they are stored.

/// Zero padding on each side of an image, in pixels.
public struct Padding: Sendable, Equatable {
    public var top, left, bottom, right: Int

    public init(top: Int, left: Int, bottom: Int, right: Int) {
        (self.top, self.left, self.bottom, self.right) = (top, left, bottom, right)
    }

    public static func uniform(_ amount: Int) -> Padding {
        Padding(top: amount, left: amount, bottom: amount, right: amount)
    }
}

/// A 2D convolution: `weight` is `[out, in, kh, kw]`, `bias` is `[out]`.
public struct Conv2DLayer: Sendable {
    public let weight: Tensor
    public let bias: Tensor?
    public let stride: Int
    public let padding: Padding
    /// 3x3 stride 1: Winograd's F(2x2, 3x3) may run it.
    let isWinogradShape: Bool

    public init(weight: Tensor, bias: Tensor?, stride: Int = 1, padding: Padding) {
        precondition(weight.shape.count == 4, "a convolution weight is [out, in, kh, kw], not \(weight.shape)")
        precondition(bias == nil || bias!.shape == [weight.shape[0]], "bias \(bias!.shape) for weight \(weight.shape)")
        self.weight = weight
        self.bias = bias
        self.stride = stride
        self.padding = padding
        isWinogradShape = weight.shape[2] == 3 && weight.shape[3] == 3 && stride == 1
    }

    public var outChannels: Int { weight.shape[0] }
    public var inChannels: Int { weight.shape[1] }
    public var kernelHeight: Int { weight.shape[2] }
    public var kernelWidth: Int { weight.shape[3] }
}

/// A fully connected layer: `weight` is `[out, in]`, `bias` is `[out]`.
public struct LinearLayer: Sendable {
    public let weight: Tensor
    public let bias: Tensor?

    public init(weight: Tensor, bias: Tensor?) {
        precondition(weight.shape.count == 2, "a linear weight is [out, in], not \(weight.shape)")
        precondition(bias == nil || bias!.shape == [weight.shape[0]], "bias \(bias!.shape) for weight \(weight.shape)")
        self.weight = weight
        self.bias = bias
    }

    public var outFeatures: Int { weight.shape[0] }
    public var inFeatures: Int { weight.shape[1] }
}

/// Group normalization's affine parameters, each `[channels]`.
public struct GroupNormLayer: Sendable {
    public let groups: Int
    public let epsilon: Float
    public let weight: Tensor
    public let bias: Tensor

    public init(groups: Int, epsilon: Float, weight: Tensor, bias: Tensor) {
        precondition(weight.shape.count == 1 && weight.shape == bias.shape, "group norm weight and bias must be [channels]")
        precondition(weight.shape[0] % groups == 0, "\(weight.shape[0]) channels do not split into \(groups) groups")
        self.groups = groups
        self.epsilon = epsilon
        self.weight = weight
        self.bias = bias
    }

    public var channels: Int { weight.shape[0] }
}

/// Layer normalization's affine parameters, each `[channels]`.
public struct LayerNormLayer: Sendable {
    public let epsilon: Float
    public let weight: Tensor
    public let bias: Tensor

    public init(epsilon: Float, weight: Tensor, bias: Tensor) {
        precondition(weight.shape.count == 1 && weight.shape == bias.shape, "layer norm weight and bias must be [channels]")
        self.epsilon = epsilon
        self.weight = weight
        self.bias = bias
    }

    public var channels: Int { weight.shape[0] }
}
