import DiffusionKernels

/// diffusers' `ResnetBlock2D` with `time_embedding_norm = "default"`:
/// `(shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))) / scale`;
/// with "scale_shift", (s, b) = proj(silu(temb)) and norm2(·)·(1 + s) + b in place of
/// the sum; and NCSN++'s form that resamples x and silu(norm1(x)) by FIR before conv1.
struct ResnetBlock: Sendable {
    let norm1: GroupNormLayer
    let resample: KernelRuntime.FIRResample?
    let conv1: Conv2DLayer
    let timeProjection: LinearLayer?
    let scaleShift: Bool
    let norm2: GroupNormLayer
    let conv2: Conv2DLayer
    let shortcut: Conv2DLayer?
    let outputScale: Float

    /// `groups`/`groupsOut`: the two norms' groups (the config's by default);
    /// `shortcut`: a 1x1 shortcut even between equal widths (diffusers' `use_in_shortcut`).
    init(_ w: inout WeightReader, _ prefix: String, in inChannels: Int, out: Int, config: UNet2DConfig,
         outputScale: Float = 1, groups: Int? = nil, groupsOut: Int? = nil, resample: KernelRuntime.FIRResample? = nil,
         shortcut forcedShortcut: Bool = false) throws
    {
        let groups = groups ?? config.normNumGroups
        try self.init(&w, prefix, in: inChannels, out: out, groups: groups, groupsOut: groupsOut ?? groups,
                      epsilon: config.normEps, timeEmbedDim: config.timeEmbedDim, scaleShift: config.timeScaleShift,
                      outputScale: outputScale, resample: resample, shortcut: forcedShortcut)
    }

    /// `timeEmbedDim` nil: a resnet without time conditioning (an autoencoder's).
    init(_ w: inout WeightReader, _ prefix: String, in inChannels: Int, out: Int, groups: Int, groupsOut: Int,
         epsilon eps: Float, timeEmbedDim: Int?, scaleShift: Bool = false, outputScale: Float = 1,
         resample: KernelRuntime.FIRResample? = nil, shortcut forcedShortcut: Bool = false) throws
    {
        norm1 = try w.groupNorm("\(prefix).norm1", channels: inChannels, groups: groups, epsilon: eps)
        self.resample = resample
        conv1 = try w.conv("\(prefix).conv1", in: inChannels, out: out, kernel: 3, padding: .uniform(1))
        self.scaleShift = scaleShift
        timeProjection = try timeEmbedDim.map {
            try w.linear("\(prefix).time_emb_proj", in: $0, out: scaleShift ? 2 * out : out)
        }
        norm2 = try w.groupNorm("\(prefix).norm2", channels: out, groups: groupsOut, epsilon: eps)
        conv2 = try w.conv("\(prefix).conv2", in: out, out: out, kernel: 3, padding: .uniform(1))
        shortcut = inChannels == out && !forcedShortcut
            ? nil : try w.conv("\(prefix).conv_shortcut", in: inChannels, out: out, kernel: 1, padding: .uniform(0))
        self.outputScale = outputScale
    }

    /// `activatedTime` is `silu(temb)`, shared by every resnet of a forward pass
    /// (nil for a resnet without time conditioning).
    func callAsFunction(_ input: Tensor, activatedTime: Tensor?, on k: KernelRuntime) -> Tensor {
        let timeBias = timeProjection.map { k.linear(activatedTime!, $0) }
        var h = k.groupNorm(input, norm1, silu: true)
        var x = input
        if let resample {
            x = k.firResample(x, resample)
            h = k.firResample(h, resample)
        }
        if scaleShift {
            h = k.silu(k.scaleShift(k.groupNorm(k.conv2d(h, conv1), norm2), by: timeBias!))
        } else {
            h = k.conv2d(h, conv1, epilogue: ConvEpilogue(channelBias: timeBias))
            h = k.groupNorm(h, norm2, silu: true)
        }
        let skip = shortcut.map { k.conv2d(x, $0) } ?? x
        return k.conv2d(h, conv2, epilogue: ConvEpilogue(residual: skip, outputScale: outputScale))
    }
}

/// The resnets of a down level, each followed by its attention when there are
/// attentions: the level's output and every resnet's output, for the up path.
func downResnets(_ x: Tensor, _ resnets: [ResnetBlock], _ attentions: [AttentionLayer], activatedTime: Tensor?,
                 on k: KernelRuntime) -> (Tensor, [Tensor]) {
    var h = x
    var skips: [Tensor] = []
    for (i, resnet) in resnets.enumerated() {
        h = resnet(h, activatedTime: activatedTime, on: k)
        if !attentions.isEmpty { h = k.attention(h, attentions[i]) }
        skips.append(h)
    }
    return (h, skips)
}

/// `DownBlock2D` / `AttnDownBlock2D`: resnets (each followed by attention in the
/// attention variant), then an optional stride-2 convolution.
struct DownBlock: Sendable {
    let resnets: [ResnetBlock]
    let attentions: [AttentionLayer]
    let downsample: Conv2DLayer?

    /// Returns the block's output and the skip tensors it hands to the up path.
    func callAsFunction(_ x: Tensor, activatedTime: Tensor?, on k: KernelRuntime) -> (Tensor, [Tensor]) {
        var (h, skips) = downResnets(x, resnets, attentions, activatedTime: activatedTime, on: k)
        if let downsample {
            h = k.conv2d(h, downsample)
            skips.append(h)
        }
        return (h, skips)
    }
}

/// `UNetMidBlock2D`: resnet, then (attention, resnet) once.
struct MidBlock: Sendable {
    let first: ResnetBlock
    let attention: AttentionLayer?
    let second: ResnetBlock

    func callAsFunction(_ x: Tensor, activatedTime: Tensor?, on k: KernelRuntime) -> Tensor {
        var h = first(x, activatedTime: activatedTime, on: k)
        if let attention { h = k.attention(h, attention) }
        return second(h, activatedTime: activatedTime, on: k)
    }
}

/// `UpBlock2D` / `AttnUpBlock2D`: each resnet takes the running tensor with the
/// latest skip tensor appended along channels; an optional nearest-2x upsample and
/// convolution (fused into one op) closes the block.
struct UpBlock: Sendable {
    let resnets: [ResnetBlock]
    let attentions: [AttentionLayer]
    let upsample: Conv2DLayer?

    func callAsFunction(_ x: Tensor, skips: inout [Tensor], activatedTime: Tensor, on k: KernelRuntime) -> Tensor {
        var h = x
        for (i, resnet) in resnets.enumerated() {
            h = resnet(k.concatenateChannels([h, skips.removeLast()]), activatedTime: activatedTime, on: k)
            if !attentions.isEmpty { h = k.attention(h, attentions[i]) }
        }
        if let upsample { h = k.conv2d(h, upsample, upsampleInput: true) }
        return h
    }
}
