import DiffusionKernels
import Foundation

/// diffusers' `UNet2DModel` on the shared kernel runtime.
///
/// Built from a diffusers config and safetensors weights; the forward pass maps a
/// noisy sample `[batch, in, h, w]`, one timestep per image and (for class-conditional
/// models) one class label per image to the model output `[batch, out, h, w]`.
/// Every image is computed independently of the others in its batch.
public final class UNet2DModel: Sendable {
    public let config: UNet2DConfig
    let convIn: Conv2DLayer
    /// The Fourier frequencies of a `fourier` time embedding.
    let fourierWeight: Tensor?
    let timeLinear1: LinearLayer
    let timeLinear2: LinearLayer
    let classEmbedding: ClassEmbedding?
    /// A level of either kind: diffusers' own blocks, or NCSN++'s skip blocks.
    enum DownLevel: Sendable { case plain(DownBlock), skip(SkipDownBlock) }
    enum UpLevel: Sendable { case plain(UpBlock), skip(SkipUpBlock) }

    let downBlocks: [DownLevel]
    let midBlock: MidBlock?
    let upBlocks: [UpLevel]
    let normOut: GroupNormLayer
    let convOut: Conv2DLayer

    /// Loads weights named as diffusers saves them; every tensor must match the config.
    public init(config: UNet2DConfig, weights: any WeightSource) throws {
        self.config = config
        var w = WeightReader(source: weights)
        let channels = config.blockOutChannels
        let (groups, eps) = (config.normNumGroups, config.normEps)
        let timeDim = config.timeEmbedDim
        convIn = try w.conv("conv_in", in: config.inChannels, out: channels[0], kernel: 3, padding: .uniform(1))
        fourierWeight = config.fourierTimeEmbedding ? try w.tensor("time_proj.weight", shape: [channels[0]]) : nil
        timeLinear1 = try w.linear("time_embedding.linear_1", in: config.timeFeatureDim, out: timeDim)
        timeLinear2 = try w.linear("time_embedding.linear_2", in: timeDim, out: timeDim)
        classEmbedding = try config.classEmbedding.map {
            try ClassEmbedding(&w, $0, featureDim: config.timeFeatureDim, timeEmbedDim: timeDim,
                               flipSinToCos: config.flipSinToCos, freqShift: config.freqShift)
        }
        func attention(_ prefix: String, _ channels: Int, groups: Int?, rescale: Float = 1) throws -> AttentionLayer {
            try w.attention(prefix, channels: channels, headDim: config.attentionHeadDim ?? channels, groups: groups,
                            epsilon: eps, rescaleOutputFactor: rescale)
        }

        var down: [DownLevel] = []
        for (level, type) in config.downBlockTypes.enumerated() {
            let prefix = "down_blocks.\(level)"
            let out = channels[level]
            if type == .skip || type == .attentionSkip {
                down.append(.skip(try SkipDownBlock(&w, prefix, in: channels[max(level - 1, 0)], out: out,
                                                    attention: type == .attentionSkip, last: level == channels.count - 1,
                                                    config: config)))
                continue
            }
            var resnets: [ResnetBlock] = []
            var attentions: [AttentionLayer] = []
            for layer in 0..<config.layersPerBlock {
                let inChannels = layer == 0 ? channels[max(level - 1, 0)] : out
                resnets.append(try ResnetBlock(&w, "\(prefix).resnets.\(layer)", in: inChannels, out: out, config: config))
                if type == .attention { attentions.append(try attention("\(prefix).attentions.\(layer)", out, groups: groups)) }
            }
            let isLast = level == channels.count - 1
            let pad = config.downsamplePadding == 1
                ? Padding.uniform(1) : Padding(top: 0, left: 0, bottom: 1, right: 1)
            let downsample = isLast
                ? nil : try w.conv("\(prefix).downsamplers.0.conv", in: out, out: out, kernel: 3, stride: 2, padding: pad)
            down.append(.plain(DownBlock(resnets: resnets, attentions: attentions, downsample: downsample)))
        }
        downBlocks = down

        if config.hasMidBlock {
            let c = channels[channels.count - 1]
            let scale = config.midBlockScaleFactor
            let resnetGroups = config.normGroups(c)
            midBlock = MidBlock(
                first: try ResnetBlock(&w, "mid_block.resnets.0", in: c, out: c, config: config, outputScale: scale,
                                       groups: resnetGroups),
                attention: config.addAttention
                    // diffusers' mid block gives its attention the resnets' groups under "default" only
                    ? try attention("mid_block.attentions.0", c, groups: config.attnNormNumGroups ?? (config.timeScaleShift ? nil : resnetGroups),
                                    rescale: scale)
                    : nil,
                second: try ResnetBlock(&w, "mid_block.resnets.1", in: c, out: c, config: config, outputScale: scale,
                                        groups: resnetGroups))
        } else {
            midBlock = nil
        }

        let reversed = Array(channels.reversed())
        var up: [UpLevel] = []
        for (level, type) in config.upBlockTypes.enumerated() {
            let prefix = "up_blocks.\(level)"
            let out = reversed[level]
            let previous = reversed[max(level - 1, 0)]
            let skipIn = reversed[min(level + 1, channels.count - 1)]
            if type == .skip || type == .attentionSkip {
                up.append(.skip(try SkipUpBlock(&w, prefix, previous: previous, out: out, skipIn: skipIn,
                                                attention: type == .attentionSkip, last: level == channels.count - 1,
                                                config: config)))
                continue
            }
            var resnets: [ResnetBlock] = []
            var attentions: [AttentionLayer] = []
            let layers = config.layersPerBlock + 1
            for layer in 0..<layers {
                let skip = layer == layers - 1 ? skipIn : out
                let inChannels = (layer == 0 ? previous : out) + skip
                resnets.append(try ResnetBlock(&w, "\(prefix).resnets.\(layer)", in: inChannels, out: out, config: config))
                if type == .attention { attentions.append(try attention("\(prefix).attentions.\(layer)", out, groups: groups)) }
            }
            let isLast = level == channels.count - 1
            let upsample = isLast
                ? nil : try w.conv("\(prefix).upsamplers.0.conv", in: out, out: out, kernel: 3, padding: .uniform(1))
            up.append(.plain(UpBlock(resnets: resnets, attentions: attentions, upsample: upsample)))
        }
        upBlocks = up

        normOut = try w.groupNorm("conv_norm_out", channels: channels[0], groups: config.normGroups(channels[0]), epsilon: eps)
        convOut = try w.conv("conv_out", in: channels[0], out: config.outChannels, kernel: 3, padding: .uniform(1))
        try w.rejectUnused()
    }

    /// The model output for `sample` at `timesteps` (one per image).
    ///
    /// `classLabels` (one per image: a label, or a super-resolution stage's
    /// augmentation level) are required exactly when the model has a class
    /// embedding.
    public func forward(_ sample: Tensor, timesteps: [Float], classLabels: [Int]? = nil, on k: KernelRuntime) throws
        -> Tensor
    {
        let batch = sample.shape.first ?? 0
        guard sample.shape.count == 4, sample.shape[1] == config.inChannels, batch > 0 else {
            throw DiffusionError("the model takes samples [batch, \(config.inChannels), height, width], not \(sample.shape)")
        }
        let factor = 1 << (config.blockOutChannels.count - 1)
        guard sample.shape[2] % factor == 0, sample.shape[3] % factor == 0 else {
            throw DiffusionError("image size \(sample.shape[2])x\(sample.shape[3]) must be a multiple of \(factor) for this model")
        }
        guard timesteps.count == batch else {
            throw DiffusionError("\(timesteps.count) timesteps for a batch of \(batch)")
        }

        if fourierWeight != nil, let bad = timesteps.first(where: { !($0 > 0) }) {
            throw DiffusionError("a model of Fourier time features takes σ > 0 as its time, not \(bad)")
        }
        var time = fourierWeight.map { k.fourierEmbedding(timesteps, weight: $0) }
            ?? k.timestepEmbedding(timesteps, dimension: config.blockOutChannels[0],
                                   flipSinToCos: config.flipSinToCos, freqShift: config.freqShift)
        time = k.linear(k.linear(time, timeLinear1), timeLinear2, siluInput: true)
        time = try ClassEmbedding.add(classEmbedding, classLabels, to: time, batch: batch, on: k)
        let activatedTime = k.silu(time)

        var h = config.centerInputSample ? k.affine(sample, scale: 2, shift: -1) : sample
        var image = h  // the skip blocks' image path starts from the input
        h = k.conv2d(h, convIn)
        var skips = [h]
        for level in downBlocks {
            switch level {
            case .plain(let block):
                let (output, blockSkips) = block(h, activatedTime: activatedTime, on: k)
                (h, skips) = (output, skips + blockSkips)
            case .skip(let block):
                let (output, blockSkips, smaller) = block(h, image: image, activatedTime: activatedTime, on: k)
                (h, skips, image) = (output, skips + blockSkips, smaller)
            }
        }
        if let midBlock { h = midBlock(h, activatedTime: activatedTime, on: k) }
        var rebuilt: Tensor?
        for level in upBlocks {
            switch level {
            case .plain(let block): h = block(h, skips: &skips, activatedTime: activatedTime, on: k)
            case .skip(let block): (h, rebuilt) = block(h, skips: &skips, image: rebuilt, activatedTime: activatedTime, on: k)
            }
        }
        var output = k.conv2d(k.groupNorm(h, normOut, silu: true), convOut)
        if let rebuilt { output = k.add(output, rebuilt) }
        guard fourierWeight != nil else { return output }
        // a score model's output over σ: ∇ log p_σ(x) ≈ −ε/σ
        let size = output.sliceCount
        for (image, sigma) in timesteps.enumerated() {
            for i in 0..<size { output.data[image * size + i] /= sigma }
        }
        return output
    }
}
