import DiffusionKernels
import Foundation

/// diffusers' `AutoencoderKL` and `VQModel`: one `Encoder`/`Decoder` pair
/// (`DownEncoderBlock2D`s, a mid block with attention, `UpDecoderBlock2D`s) and
/// the bottleneck between them. The render decodes latents the U-Net made
/// (`decode(latents / scaling_factor)`, as StableDiffusionPipeline and LDMPipeline
/// do) and encodes an init image for image-to-image.
public final class Autoencoder: Sendable {
    public let config: AutoencoderConfig
    let encoderIn: Conv2DLayer
    let encoderDown: [DownBlock]
    let encoderMid: MidBlock
    let encoderNorm: GroupNormLayer
    let encoderOut: Conv2DLayer
    /// AutoencoderKL: 1x1 convolutions either side of the Gaussian; VQModel: into and out of the codebook.
    let quantConv: Conv2DLayer?
    let postQuantConv: Conv2DLayer?
    /// VQModel's codebook `[entries, dim]`.
    let codebook: Tensor?
    let decoderIn: Conv2DLayer
    let decoderMid: MidBlock
    let decoderUp: [(resnets: [ResnetBlock], upsample: Conv2DLayer?)]
    let decoderNorm: GroupNormLayer
    let decoderOut: Conv2DLayer

    public init(config: AutoencoderConfig, weights: any WeightSource) throws {
        self.config = config
        var w = WeightReader(source: weights)
        let channels = config.blockOutChannels
        let groups = config.normNumGroups
        let eps: Float = 1e-6
        func resnet(_ prefix: String, _ inChannels: Int, _ out: Int) throws -> ResnetBlock {
            try ResnetBlock(&w, prefix, in: inChannels, out: out, groups: groups, groupsOut: groups, epsilon: eps,
                            timeEmbedDim: nil)
        }
        func mid(_ prefix: String) throws -> MidBlock {
            let c = channels[channels.count - 1]
            return MidBlock(
                first: try resnet("\(prefix).resnets.0", c, c),
                attention: config.midBlockAttention
                    ? try w.attention("\(prefix).attentions.0", channels: c, headDim: c, groups: groups, epsilon: eps,
                                      rescaleOutputFactor: 1)
                    : nil,
                second: try resnet("\(prefix).resnets.1", c, c))
        }
        let latent = config.latentChannels
        encoderIn = try w.conv("encoder.conv_in", in: config.inChannels, out: channels[0], kernel: 3, padding: .uniform(1))
        encoderDown = try channels.indices.map { level in
            let out = channels[level]
            let resnets = try (0..<config.layersPerBlock).map { layer in
                try resnet("encoder.down_blocks.\(level).resnets.\(layer)", layer == 0 ? channels[max(level - 1, 0)] : out, out)
            }
            // diffusers' Downsample2D of padding 0 pads right and bottom by one
            let downsample = level == channels.count - 1 ? nil : try w.conv(
                "encoder.down_blocks.\(level).downsamplers.0.conv", in: out, out: out, kernel: 3, stride: 2,
                padding: Padding(top: 0, left: 0, bottom: 1, right: 1))
            return DownBlock(resnets: resnets, attentions: [], downsample: downsample)
        }
        encoderMid = try mid("encoder.mid_block")
        encoderNorm = try w.groupNorm("encoder.conv_norm_out", channels: channels.last!, groups: groups, epsilon: eps)
        // the KL encoder returns mean and log-variance (double_z)
        let moments = config.kind == .gaussian ? 2 * latent : latent
        encoderOut = try w.conv("encoder.conv_out", in: channels.last!, out: moments, kernel: 3, padding: .uniform(1))

        switch config.kind {
        case .gaussian:
            quantConv = config.quantConv ? try w.conv("quant_conv", in: moments, out: moments, kernel: 1, padding: .uniform(0)) : nil
            postQuantConv = config.postQuantConv ? try w.conv("post_quant_conv", in: latent, out: latent, kernel: 1, padding: .uniform(0)) : nil
            codebook = nil
        case .vectorQuantized:
            let dim = config.codebookDim ?? latent
            quantConv = try w.conv("quant_conv", in: latent, out: dim, kernel: 1, padding: .uniform(0))
            codebook = try w.tensor("quantize.embedding.weight", shape: [config.codebookSize, dim])
            postQuantConv = try w.conv("post_quant_conv", in: dim, out: latent, kernel: 1, padding: .uniform(0))
        }

        let reversed = Array(channels.reversed())
        decoderIn = try w.conv("decoder.conv_in", in: latent, out: reversed[0], kernel: 3, padding: .uniform(1))
        decoderMid = try mid("decoder.mid_block")
        decoderUp = try reversed.indices.map { level in
            let out = reversed[level]
            let resnets = try (0...config.layersPerBlock).map { layer in
                try resnet("decoder.up_blocks.\(level).resnets.\(layer)", layer == 0 ? reversed[max(level - 1, 0)] : out, out)
            }
            let upsample = level == reversed.count - 1 ? nil : try w.conv(
                "decoder.up_blocks.\(level).upsamplers.0.conv", in: out, out: out, kernel: 3, padding: .uniform(1))
            return (resnets, upsample)
        }
        decoderNorm = try w.groupNorm("decoder.conv_norm_out", channels: channels[0], groups: groups, epsilon: eps)
        decoderOut = try w.conv("decoder.conv_out", in: channels[0], out: config.outChannels, kernel: 3, padding: .uniform(1))
        try w.rejectUnused()
    }

    /// The encoder's output for images `[n, in, H, W]` in −1...1: AutoencoderKL's
    /// moments (mean, then log-variance, `[n, 2·latent, h, w]`), VQModel's
    /// pre-quantisation latents (`VQModel.encode(x).latents`).
    public func encode(_ image: Tensor, on k: KernelRuntime) throws -> Tensor {
        let factor = config.downsamplingFactor
        guard image.shape.count == 4, image.shape[1] == config.inChannels, image.shape[2] % factor == 0,
              image.shape[3] % factor == 0
        else {
            throw DiffusionError("the autoencoder takes images [n, \(config.inChannels), H, W] with H and W multiples of \(factor), not \(image.shape)")
        }
        var h = k.conv2d(image, encoderIn)
        for block in encoderDown { h = block(h, activatedTime: nil, on: k).0 }
        h = k.conv2d(k.groupNorm(encoderMid(h, activatedTime: nil, on: k), encoderNorm, silu: true), encoderOut)
        return quantConv.map { k.conv2d(h, $0) } ?? h
    }

    /// The decoder's image `[n, out, H, W]` (before any clamping) for latents at
    /// the encoder's scale; a VQModel first snaps each latent to its nearest codebook entry.
    public func decode(_ latents: Tensor, on k: KernelRuntime) throws -> Tensor {
        let expected = codebook?.shape[1] ?? config.latentChannels
        guard latents.shape.count == 4, latents.shape[1] == expected else {
            throw DiffusionError("the decoder takes latents [n, \(expected), h, w], not \(latents.shape)")
        }
        var h = codebook.map { quantize(latents, $0) } ?? latents
        if let postQuantConv { h = k.conv2d(h, postQuantConv) }
        h = decoderMid(k.conv2d(h, decoderIn), activatedTime: nil, on: k)
        for (resnets, upsample) in decoderUp {
            for resnet in resnets { h = resnet(h, activatedTime: nil, on: k) }
            if let upsample { h = k.conv2d(h, upsample, upsampleInput: true) }
        }
        return k.conv2d(k.groupNorm(h, decoderNorm, silu: true), decoderOut)
    }

    /// Each pixel's latent vector replaced by the codebook entry nearest to it
    /// (Euclidean; the first of equals, as torch.argmin picks).
    func quantize(_ latents: Tensor, _ codebook: Tensor) -> Tensor {
        let (entries, dim) = (codebook.shape[0], codebook.shape[1])
        let plane = latents.sliceCount / dim
        let output = Tensor(uninitialized: latents.shape)
        for image in 0..<latents.shape[0] {
            let (source, destination) = (latents.data + image * latents.sliceCount, output.data + image * latents.sliceCount)
            for pixel in 0..<plane {
                var best = (entry: 0, distance: Double.infinity)
                for entry in 0..<entries {
                    var distance = 0.0
                    for c in 0..<dim {
                        let d = Double(source[c * plane + pixel]) - Double(codebook.data[entry * dim + c])
                        distance += d * d
                    }
                    if distance < best.distance { best = (entry, distance) }
                }
                for c in 0..<dim { destination[c * plane + pixel] = codebook.data[best.entry * dim + c] }
            }
        }
        return output
    }
}
