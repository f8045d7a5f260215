import DiffusionKernels

/// Takes a model's tensors by name and shape, remembering which were used,
/// so that a missing, misshapen or left-over tensor is a clear error.
struct WeightReader {
    let source: any WeightSource
    private var used: Set<String> = []

    init(source: any WeightSource) { self.source = source }

    mutating func tensor(_ name: String, shape: [Int]) throws -> Tensor {
        guard source.contains(name) else {
            throw DiffusionError("\(source.origin): tensor \(name) is missing; the weights do not match config.json")
        }
        if let stored = source.shape(of: name), stored != shape {
            throw DiffusionError("\(source.origin): tensor \(name) has shape \(stored), config.json implies \(shape)")
        }
        used.insert(name)
        return source.tensor(name, shape: shape)
    }

    /// The first of `names` the source has (for checkpoints saved under older names).
    mutating func tensor(anyOf names: [String], shape: [Int]) throws -> Tensor {
        try tensor(names.first { source.contains($0) } ?? names[0], shape: shape)
    }

    /// Marks `name` used when present: a buffer checkpoints may carry that the
    /// model recomputes (CLIP's `position_ids`).
    mutating func ignore(_ name: String) {
        if source.contains(name) { used.insert(name) }
    }

    func rejectUnused() throws {
        let unused = source.unused(after: used)
        if let first = unused.first {
            throw DiffusionError("\(source.origin): \(unused.count) tensors that config.json does not describe, first \(first)")
        }
    }

    mutating func conv(_ prefix: String, in inChannels: Int, out: Int, kernel: Int, stride: Int = 1,
                       padding: Padding) throws -> Conv2DLayer
    {
        Conv2DLayer(
            weight: try tensor("\(prefix).weight", shape: [out, inChannels, kernel, kernel]),
            bias: try tensor("\(prefix).bias", shape: [out]), stride: stride, padding: padding)
    }

    mutating func linear(_ prefix: String, in inFeatures: Int, out: Int) throws -> LinearLayer {
        LinearLayer(weight: try tensor("\(prefix).weight", shape: [out, inFeatures]),
                    bias: try tensor("\(prefix).bias", shape: [out]))
    }

    /// A linear layer `[out, in]` as the 1x1 convolution it is on channel-major tokens.
    mutating func pointwise(_ prefix: String, in inFeatures: Int, out: Int, bias: Bool = true) throws -> Conv2DLayer {
        try stackedPointwise([prefix], in: inFeatures, out: out, bias: bias)
    }

    /// Linear layers of one input stacked into one 1x1 convolution (q, k and v:
    /// one product instead of three), each `[out, in]` under `prefix.weight`.
    mutating func stackedPointwise(_ prefixes: [String], in inFeatures: Int, out: Int, bias: Bool = true) throws
        -> Conv2DLayer
    {
        let weights = try prefixes.map { try tensor("\($0).weight", shape: [out, inFeatures]) }
        let biases = bias ? try prefixes.map { try tensor("\($0).bias", shape: [out]) } : nil
        return Conv2DLayer(weight: Tensor.stacking(weights).reshaped([prefixes.count * out, inFeatures, 1, 1]),
                           bias: biases.map(Tensor.stacking), padding: .uniform(0))
    }

    mutating func layerNorm(_ prefix: String, channels: Int, epsilon: Float) throws -> LayerNormLayer {
        LayerNormLayer(epsilon: epsilon, weight: try tensor("\(prefix).weight", shape: [channels]),
                       bias: try tensor("\(prefix).bias", shape: [channels]))
    }

    mutating func groupNorm(_ prefix: String, channels: Int, groups: Int, epsilon: Float) throws -> GroupNormLayer {
        GroupNormLayer(groups: groups, epsilon: epsilon, weight: try tensor("\(prefix).weight", shape: [channels]),
                       bias: try tensor("\(prefix).bias", shape: [channels]))
    }

    /// An attention block under either naming: `to_q/to_k/to_v/to_out.0`, or the
    /// legacy `query/key/value/proj_attn` of checkpoints such as google/ddpm-cifar10-32.
    /// `groups` nil: no group norm (diffusers' mid-block attention under "scale_shift").
    mutating func attention(_ prefix: String, channels: Int, headDim: Int, groups: Int?, epsilon: Float,
                            rescaleOutputFactor: Float) throws -> AttentionLayer
    {
        func names(_ current: String, _ legacy: String, _ part: String) -> [String] {
            ["\(prefix).\(current).\(part)", "\(prefix).\(legacy).\(part)"]
        }
        var weights: [Tensor] = []
        var biases: [Tensor] = []
        for (current, legacy) in [("to_q", "query"), ("to_k", "key"), ("to_v", "value")] {
            weights.append(try tensor(anyOf: names(current, legacy, "weight"), shape: [channels, channels]))
            biases.append(try tensor(anyOf: names(current, legacy, "bias"), shape: [channels]))
        }
        let outWeight = try tensor(anyOf: names("to_out.0", "proj_attn", "weight"), shape: [channels, channels])
        let outBias = try tensor(anyOf: names("to_out.0", "proj_attn", "bias"), shape: [channels])
        return AttentionLayer(
            norm: try groups.map { try groupNorm("\(prefix).group_norm", channels: channels, groups: $0, epsilon: epsilon) },
            queryKeyValue: Conv2DLayer(weight: Tensor.stacking(weights).reshaped([3 * channels, channels, 1, 1]),
                                       bias: Tensor.stacking(biases), padding: .uniform(0)),
            output: Conv2DLayer(weight: outWeight.reshaped([channels, channels, 1, 1]), bias: outBias,
                                padding: .uniform(0)),
            heads: channels / headDim, rescaleOutputFactor: rescaleOutputFactor)
    }
}
