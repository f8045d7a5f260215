import DiffusionKernels

/// diffusers' `BasicTransformerBlock` as SD's U-Nets build it, on channel-major
/// tokens (a linear layer is the 1x1 convolution it is there): self-attention,
/// cross-attention on the text states, a GEGLU feed-forward, each pre-norm
/// (layer norm) with a residual.
struct TransformerBlock: Sendable {
    let norm1: LayerNormLayer
    let selfQueryKeyValue: Conv2DLayer
    let selfOutput: Conv2DLayer
    let norm2: LayerNormLayer
    let crossQuery: Conv2DLayer
    let crossKeyValue: Conv2DLayer
    let crossOutput: Conv2DLayer
    let norm3: LayerNormLayer
    let feedForwardIn: Conv2DLayer
    let feedForwardOut: Conv2DLayer
    let heads: Int

    init(_ w: inout WeightReader, _ prefix: String, channels: Int, heads: Int, contextDim: Int) throws {
        norm1 = try w.layerNorm("\(prefix).norm1", channels: channels, epsilon: 1e-5)
        selfQueryKeyValue = try w.stackedPointwise(["to_q", "to_k", "to_v"].map { "\(prefix).attn1.\($0)" },
                                                   in: channels, out: channels, bias: false)
        selfOutput = try w.pointwise("\(prefix).attn1.to_out.0", in: channels, out: channels)
        norm2 = try w.layerNorm("\(prefix).norm2", channels: channels, epsilon: 1e-5)
        crossQuery = try w.pointwise("\(prefix).attn2.to_q", in: channels, out: channels, bias: false)
        crossKeyValue = try w.stackedPointwise(["to_k", "to_v"].map { "\(prefix).attn2.\($0)" },
                                               in: contextDim, out: channels, bias: false)
        crossOutput = try w.pointwise("\(prefix).attn2.to_out.0", in: channels, out: channels)
        norm3 = try w.layerNorm("\(prefix).norm3", channels: channels, epsilon: 1e-5)
        feedForwardIn = try w.pointwise("\(prefix).ff.net.0.proj", in: channels, out: 8 * channels)
        feedForwardOut = try w.pointwise("\(prefix).ff.net.2", in: 4 * channels, out: channels)
        self.heads = heads
    }

    /// `context`: the text states, channel-major `[n, contextDim, tokens, 1]`.
    func callAsFunction(_ input: Tensor, context: Tensor, on k: KernelRuntime) -> Tensor {
        let c = input.shape[1]
        let qkv = k.conv2d(k.layerNorm(input, norm1), selfQueryKeyValue)
        var mixed = k.multiHeadAttention(query: TokenRows(qkv, channels: c), key: TokenRows(qkv, offset: c, channels: c),
                                         value: TokenRows(qkv, offset: 2 * c, channels: c), heads: heads,
                                         outputShape: input.shape)
        var x = k.conv2d(mixed, selfOutput, epilogue: ConvEpilogue(residual: input))
        let query = k.conv2d(k.layerNorm(x, norm2), crossQuery)
        let keyValue = k.conv2d(context, crossKeyValue)
        mixed = k.multiHeadAttention(query: TokenRows(query), key: TokenRows(keyValue, channels: c),
                                     value: TokenRows(keyValue, offset: c, channels: c), heads: heads,
                                     outputShape: input.shape)
        x = k.conv2d(mixed, crossOutput, epilogue: ConvEpilogue(residual: x))
        let inner = k.geglu(k.conv2d(k.layerNorm(x, norm3), feedForwardIn))
        return k.conv2d(inner, feedForwardOut, epilogue: ConvEpilogue(residual: x))
    }
}

/// diffusers' `Transformer2DModel` over a feature map: group norm, a projection
/// in (a linear layer or a 1x1 convolution: the same product on channel-major
/// pixels), the transformer blocks, a projection out, plus the input.
struct SpatialTransformer: Sendable {
    let norm: GroupNormLayer
    let projectIn: Conv2DLayer
    let blocks: [TransformerBlock]
    let projectOut: Conv2DLayer

    init(_ w: inout WeightReader, _ prefix: String, channels: Int, heads: Int, layers: Int,
         config: UNet2DConditionConfig) throws
    {
        norm = try w.groupNorm("\(prefix).norm", channels: channels, groups: config.normNumGroups, epsilon: 1e-6)
        func projection(_ name: String) throws -> Conv2DLayer {
            config.useLinearProjection
                ? try w.pointwise("\(prefix).\(name)", in: channels, out: channels)
                : try w.conv("\(prefix).\(name)", in: channels, out: channels, kernel: 1, padding: .uniform(0))
        }
        projectIn = try projection("proj_in")
        blocks = try (0..<layers).map {
            try TransformerBlock(&w, "\(prefix).transformer_blocks.\($0)", channels: channels, heads: heads,
                                 contextDim: config.crossAttentionDim)
        }
        projectOut = try projection("proj_out")
    }

    func callAsFunction(_ input: Tensor, context: Tensor, on k: KernelRuntime) -> Tensor {
        var h = k.conv2d(k.groupNorm(input, norm), projectIn)
        for block in blocks { h = block(h, context: context, on: k) }
        return k.conv2d(h, projectOut, epilogue: ConvEpilogue(residual: input))
    }
}
