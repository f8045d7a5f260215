import DiffusionKernels

/// NCSN++'s blocks (Song et al. 2021, diffusers' `SkipDownBlock2D`,
/// `AttnSkipDownBlock2D`, `SkipUpBlock2D`, `AttnSkipUpBlock2D`): resnets of
/// output scale √2 whose norms take min(c/4, 32) groups, FIR resampling inside
/// a resnet, and the image itself carried beside the features ("skip"):
/// downsampled by FIR and added through a 1x1 convolution on the way down, and
/// rebuilt on the way up from each level's features, upsampled, and added to
/// the output.
enum SkipBlocks {
    static let outputScale = Float(2.0.squareRoot())
    /// The image channels the skip convolutions read and write (diffusers fixes 3).
    static let imageChannels = 3

    static func groups(_ channels: Int) -> Int { min(channels / 4, 32) }

    /// Attention of a skip block: 32 groups, output scale √2, a residual.
    static func attention(_ w: inout WeightReader, _ prefix: String, _ channels: Int, config: UNet2DConfig) throws
        -> AttentionLayer
    {
        try w.attention(prefix, channels: channels, headDim: config.attentionHeadDim ?? channels, groups: 32,
                        epsilon: config.normEps, rescaleOutputFactor: outputScale)
    }
}

/// `SkipDownBlock2D` / `AttnSkipDownBlock2D`: resnets (each followed by attention
/// in the attention variant), then, but at the last level, a FIR-downsampling
/// resnet and the image downsampled by FIR, added through `skip_conv`.
struct SkipDownBlock: Sendable {
    let resnets: [ResnetBlock]
    let attentions: [AttentionLayer]
    let downResnet: ResnetBlock?
    let skipConv: Conv2DLayer?

    init(_ w: inout WeightReader, _ prefix: String, in inChannels: Int, out: Int, attention: Bool, last: Bool,
         config: UNet2DConfig) throws
    {
        var resnets: [ResnetBlock] = [], attentions: [AttentionLayer] = []
        for layer in 0..<config.layersPerBlock {
            let input = layer == 0 ? inChannels : out
            resnets.append(try ResnetBlock(&w, "\(prefix).resnets.\(layer)", in: input, out: out, config: config,
                                           outputScale: SkipBlocks.outputScale, groups: SkipBlocks.groups(input),
                                           groupsOut: SkipBlocks.groups(out)))
            if attention { attentions.append(try SkipBlocks.attention(&w, "\(prefix).attentions.\(layer)", out, config: config)) }
        }
        self.resnets = resnets
        self.attentions = attentions
        downResnet = last ? nil : try ResnetBlock(&w, "\(prefix).resnet_down", in: out, out: out, config: config,
                                                  outputScale: SkipBlocks.outputScale, groups: SkipBlocks.groups(out),
                                                  resample: .down, shortcut: true)
        skipConv = last ? nil : try w.conv("\(prefix).skip_conv", in: SkipBlocks.imageChannels, out: out, kernel: 1,
                                           padding: .uniform(0))
    }

    /// Returns the block's output, the skip tensors it hands to the up path, and the image at its output's size.
    func callAsFunction(_ x: Tensor, image: Tensor, activatedTime: Tensor, on k: KernelRuntime) -> (Tensor, [Tensor], Tensor) {
        var (h, skips) = downResnets(x, resnets, attentions, activatedTime: activatedTime, on: k)
        var image = image
        if let downResnet, let skipConv {
            h = downResnet(h, activatedTime: activatedTime, on: k)
            image = k.firResample(image, .down)
            h = k.conv2d(image, skipConv, epilogue: ConvEpilogue(residual: h))
            skips.append(h)
        }
        return (h, skips, image)
    }
}

/// `SkipUpBlock2D` / `AttnSkipUpBlock2D`: resnets on the running tensor with the
/// latest skip tensor appended (one attention after them in the attention
/// variant); the image so far, upsampled by FIR, plus (but at the last level)
/// `skip_conv(silu(skip_norm(h)))`; then a FIR-upsampling resnet.
struct SkipUpBlock: Sendable {
    let resnets: [ResnetBlock]
    let attention: AttentionLayer?
    let upResnet: ResnetBlock?
    let skipNorm: GroupNormLayer?
    let skipConv: Conv2DLayer?

    /// `previous`, `skipIn`: the widths of the running tensor and of the last skip
    /// tensor, as `UpBlock` takes them.
    init(_ w: inout WeightReader, _ prefix: String, previous: Int, out: Int, skipIn: Int, attention: Bool, last: Bool,
         config: UNet2DConfig) throws
    {
        var resnets: [ResnetBlock] = []
        let layers = config.layersPerBlock + 1
        for layer in 0..<layers {
            let input = layer == 0 ? previous : out
            let skip = layer == layers - 1 ? skipIn : out
            // diffusers' AttnSkipUpBlock2D groups by min(input + skip // 4, 32) (its precedence), SkipUpBlock2D by the sum's quarter
            let groups = attention ? min(input + skip / 4, 32) : SkipBlocks.groups(input + skip)
            resnets.append(try ResnetBlock(&w, "\(prefix).resnets.\(layer)", in: input + skip, out: out, config: config,
                                           outputScale: SkipBlocks.outputScale, groups: groups, groupsOut: SkipBlocks.groups(out)))
        }
        self.resnets = resnets
        self.attention = attention ? try SkipBlocks.attention(&w, "\(prefix).attentions.0", out, config: config) : nil
        upResnet = last ? nil : try ResnetBlock(&w, "\(prefix).resnet_up", in: out, out: out, config: config,
                                                outputScale: SkipBlocks.outputScale, groups: SkipBlocks.groups(out),
                                                resample: .up, shortcut: true)
        skipNorm = last ? nil : try w.groupNorm("\(prefix).skip_norm", channels: out, groups: SkipBlocks.groups(out),
                                                epsilon: config.normEps)
        skipConv = last ? nil : try w.conv("\(prefix).skip_conv", in: out, out: SkipBlocks.imageChannels, kernel: 3,
                                           padding: .uniform(1))
    }

    /// Returns the block's output and the image rebuilt so far (nil before the first skip block).
    func callAsFunction(_ x: Tensor, skips: inout [Tensor], image: Tensor?, activatedTime: Tensor, on k: KernelRuntime)
        -> (Tensor, Tensor?)
    {
        var h = x
        for resnet in resnets {
            h = resnet(k.concatenateChannels([h, skips.removeLast()]), activatedTime: activatedTime, on: k)
        }
        if let attention { h = k.attention(h, attention) }
        var image = image.map { k.firResample($0, .up) }
        if let upResnet, let skipNorm, let skipConv {
            let rebuilt = k.conv2d(k.groupNorm(h, skipNorm, silu: true), skipConv,
                                   epilogue: image.map { ConvEpilogue(residual: $0) } ?? ConvEpilogue())
            image = rebuilt
            h = upResnet(h, activatedTime: activatedTime, on: k)
        }
        return (h, image)
    }
}
