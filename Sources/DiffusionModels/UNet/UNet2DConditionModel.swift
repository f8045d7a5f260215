import DiffusionKernels
import Foundation

/// diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x and 2.x use it: the
/// U-Net of `UNet2DModel` whose attention levels are spatial transformers with
/// cross-attention on text states (`CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn`,
/// `CrossAttnUpBlock2D`). Every image is computed independently of its batch-mates.
public final class UNet2DConditionModel: Sendable {
    struct Level: Sendable {
        let resnets: [ResnetBlock]
        let transformers: [SpatialTransformer]
        /// The down path's stride-2 convolution, or the up path's upsampling one.
        let resample: Conv2DLayer?
    }

    public let config: UNet2DConditionConfig
    let convIn: Conv2DLayer
    let timeLinear1: LinearLayer
    let timeLinear2: LinearLayer
    let classEmbedding: ClassEmbedding?
    let down: [Level]
    let midFirst: ResnetBlock
    let midTransformer: SpatialTransformer
    let midSecond: ResnetBlock
    let up: [Level]
    let normOut: GroupNormLayer
    let convOut: Conv2DLayer

    public init(config: UNet2DConditionConfig, weights: any WeightSource) throws {
        self.config = config
        var w = WeightReader(source: weights)
        let channels = config.blockOutChannels
        let levels = channels.count
        let timeDim = config.timeEmbedDim
        func resnet(_ prefix: String, _ inChannels: Int, _ out: Int, scale: Float = 1) throws -> ResnetBlock {
            try ResnetBlock(&w, prefix, in: inChannels, out: out, groups: config.normNumGroups,
                            groupsOut: config.normNumGroups, epsilon: config.normEps, timeEmbedDim: timeDim,
                            outputScale: scale)
        }
        func transformer(_ prefix: String, _ c: Int, level: Int) throws -> SpatialTransformer {
            try SpatialTransformer(&w, prefix, channels: c, heads: config.heads[level],
                                   layers: config.transformerLayersPerBlock[level], config: config)
        }
        convIn = try w.conv("conv_in", in: config.inChannels, out: channels[0], kernel: 3, padding: .uniform(1))
        timeLinear1 = try w.linear("time_embedding.linear_1", in: channels[0], out: timeDim)
        timeLinear2 = try w.linear("time_embedding.linear_2", in: timeDim, out: timeDim)
        classEmbedding = try config.classEmbedding.map {
            try ClassEmbedding(&w, $0, featureDim: channels[0], timeEmbedDim: timeDim, flipSinToCos: config.flipSinToCos,
                               freqShift: config.freqShift)
        }

        down = try (0..<levels).map { level in
            let prefix = "down_blocks.\(level)"
            let out = channels[level]
            let attends = config.downBlockTypes[level] == .crossAttention
            var resnets: [ResnetBlock] = []
            var transformers: [SpatialTransformer] = []
            for layer in 0..<config.layersPerBlock[level] {
                resnets.append(try resnet("\(prefix).resnets.\(layer)", layer == 0 ? channels[max(level - 1, 0)] : out, out))
                if attends { transformers.append(try transformer("\(prefix).attentions.\(layer)", out, level: level)) }
            }
            let pad = config.downsamplePadding == 1 ? Padding.uniform(1) : Padding(top: 0, left: 0, bottom: 1, right: 1)
            let downsample = level == levels - 1
                ? nil : try w.conv("\(prefix).downsamplers.0.conv", in: out, out: out, kernel: 3, stride: 2, padding: pad)
            return Level(resnets: resnets, transformers: transformers, resample: downsample)
        }

        let c = channels[levels - 1]
        midFirst = try resnet("mid_block.resnets.0", c, c, scale: config.midBlockScaleFactor)
        midTransformer = try transformer("mid_block.attentions.0", c, level: levels - 1)
        midSecond = try resnet("mid_block.resnets.1", c, c, scale: config.midBlockScaleFactor)

        let reversed = Array(channels.reversed())
        up = try (0..<levels).map { level in
            let prefix = "up_blocks.\(level)"
            let out = reversed[level]
            let source = levels - 1 - level  // the down level this up level mirrors
            let attends = config.upBlockTypes[level] == .crossAttention
            let layers = config.layersPerBlock[source] + 1
            var resnets: [ResnetBlock] = []
            var transformers: [SpatialTransformer] = []
            for layer in 0..<layers {
                let skip = layer == layers - 1 ? reversed[min(level + 1, levels - 1)] : out
                let inChannels = (layer == 0 ? reversed[max(level - 1, 0)] : out) + skip
                resnets.append(try resnet("\(prefix).resnets.\(layer)", inChannels, out))
                if attends {
                    transformers.append(try SpatialTransformer(
                        &w, "\(prefix).attentions.\(layer)", channels: out, heads: config.heads[source],
                        layers: config.transformerLayersPerBlock[source], config: config))
                }
            }
            let upsample = level == levels - 1
                ? nil : try w.conv("\(prefix).upsamplers.0.conv", in: out, out: out, kernel: 3, padding: .uniform(1))
            return Level(resnets: resnets, transformers: transformers, resample: upsample)
        }
        normOut = try w.groupNorm("conv_norm_out", channels: channels[0], groups: config.normNumGroups, epsilon: config.normEps)
        convOut = try w.conv("conv_out", in: channels[0], out: config.outChannels, kernel: 3, padding: .uniform(1))
        try w.rejectUnused()
    }

    /// The model output for `sample` `[n, in, h, w]` at one timestep per image,
    /// each image reading its own text states (`context`, channel-major
    /// `[n, cross_attention_dim, tokens, 1]`) and, for a model with a class
    /// embedding, its class input (the x4 upscaler's noise level).
    public func forward(_ sample: Tensor, timesteps: [Float], context: Tensor, classLabels: [Int]? = nil,
                        on k: KernelRuntime) throws -> Tensor
    {
        let batch = sample.shape.first ?? 0
        guard sample.shape.count == 4, sample.shape[1] == config.inChannels, batch > 0, timesteps.count == batch else {
            throw DiffusionError("the model takes samples [batch, \(config.inChannels), height, width] and a timestep each, not \(sample.shape) and \(timesteps.count)")
        }
        let factor = config.downsamplingFactor
        guard sample.shape[2] % factor == 0, sample.shape[3] % factor == 0 else {
            throw DiffusionError("latents of \(sample.shape[2])x\(sample.shape[3]) must be multiples of \(factor) for this model")
        }
        guard context.shape.count == 4, context.shape[0] == batch, context.shape[1] == config.crossAttentionDim else {
            throw DiffusionError("the model reads text states [\(batch), \(config.crossAttentionDim), tokens], not \(context.shape)")
        }
        var time = k.timestepEmbedding(timesteps, dimension: config.blockOutChannels[0], flipSinToCos: config.flipSinToCos,
                                       freqShift: config.freqShift)
        time = k.linear(k.linear(time, timeLinear1), timeLinear2, siluInput: true)
        time = try ClassEmbedding.add(classEmbedding, classLabels, to: time, batch: batch, on: k)
        let activatedTime = k.silu(time)

        var h = k.conv2d(config.centerInputSample ? k.affine(sample, scale: 2, shift: -1) : sample, convIn)
        var skips = [h]
        for level in down {
            for (i, resnet) in level.resnets.enumerated() {
                h = resnet(h, activatedTime: activatedTime, on: k)
                if !level.transformers.isEmpty { h = level.transformers[i](h, context: context, on: k) }
                skips.append(h)
            }
            if let downsample = level.resample {
                h = k.conv2d(h, downsample)
                skips.append(h)
            }
        }
        h = midSecond(midTransformer(midFirst(h, activatedTime: activatedTime, on: k), context: context, on: k),
                      activatedTime: activatedTime, on: k)
        for level in up {
            for (i, resnet) in level.resnets.enumerated() {
                h = resnet(k.concatenateChannels([h, skips.removeLast()]), activatedTime: activatedTime, on: k)
                if !level.transformers.isEmpty { h = level.transformers[i](h, context: context, on: k) }
            }
            if let upsample = level.resample { h = k.conv2d(h, upsample, upsampleInput: true) }
        }
        return k.conv2d(k.groupNorm(h, normOut, silu: true), convOut)
    }
}
