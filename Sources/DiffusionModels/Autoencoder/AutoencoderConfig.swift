import DiffusionKernels
import Foundation

/// diffusers' `AutoencoderKL` or `VQModel` config.json: the encoder and decoder
/// they share, and the bottleneck between them (a diagonal Gaussian, or a
/// codebook). As with the U-Net, a key is accepted at the values implemented only.
public struct AutoencoderConfig: Sendable, Equatable {
    public enum Kind: String, Sendable { case gaussian = "AutoencoderKL", vectorQuantized = "VQModel" }

    public var kind = Kind.gaussian
    public var inChannels = 3
    public var outChannels = 3
    public var blockOutChannels = [64]
    public var layersPerBlock = 1
    public var latentChannels = 4
    public var normNumGroups = 32
    public var sampleSize: Int?
    /// Latents are the encoder's output times this (the U-Net works at unit scale).
    public var scalingFactor: Float = 0.18215
    public var midBlockAttention = true
    /// AutoencoderKL's 1x1 convolutions either side of the bottleneck (SD 1.x/2.x have both).
    public var quantConv = true
    public var postQuantConv = true
    /// VQModel's codebook.
    public var codebookSize = 256
    public var codebookDim: Int?

    public init() {}

    /// How many times smaller than the image its latents are.
    public var downsamplingFactor: Int { 1 << (blockOutChannels.count - 1) }

    public init(json data: Data, source: String) throws {
        guard let object = try? JSONSerialization.jsonObject(with: data), let keys = object as? [String: Any] else {
            throw DiffusionError("\(source): not a JSON object")
        }
        guard let name = keys["_class_name"] as? String, let kind = Kind(rawValue: name) else {
            throw DiffusionError("\(source): _class_name must be AutoencoderKL or VQModel")
        }
        self.kind = kind
        var reader = ConfigReader(keys: keys, source: source)
        inChannels = try reader.int("in_channels") ?? inChannels
        outChannels = try reader.int("out_channels") ?? outChannels
        blockOutChannels = try reader.ints("block_out_channels") ?? blockOutChannels
        layersPerBlock = try reader.int("layers_per_block") ?? layersPerBlock
        latentChannels = try reader.int("latent_channels") ?? latentChannels
        normNumGroups = try reader.int("norm_num_groups") ?? normNumGroups
        sampleSize = try reader.int("sample_size")
        scalingFactor = try reader.float("scaling_factor") ?? scalingFactor
        midBlockAttention = try reader.bool("mid_block_add_attention") ?? midBlockAttention
        try reader.require("act_fn", oneOf: ["silu", "swish"])
        let levels = blockOutChannels.count
        for (key, block) in [("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")] {
            let types = try reader.strings(key) ?? [String](repeating: block, count: levels)
            if let bad = types.first(where: { $0 != block }) { throw reader.unsupported(key, bad) }
            guard types.count == levels else {
                throw DiffusionError("\(source): \(key) has \(types.count) blocks for \(levels) block_out_channels")
            }
        }
        // fp16 advice and statistics other pipelines (SD3, SDXL refiners) read
        reader.ignore(["force_upcast", "latents_mean", "latents_std"])
        switch kind {
        case .gaussian:
            quantConv = try reader.bool("use_quant_conv") ?? quantConv
            postQuantConv = try reader.bool("use_post_quant_conv") ?? postQuantConv
            // StableDiffusionPipeline decodes latents / scaling_factor and ignores the shift (SD3's)
            reader.ignore(["shift_factor"])
        case .vectorQuantized:
            codebookSize = try reader.int("num_vq_embeddings") ?? codebookSize
            codebookDim = try reader.int("vq_embed_dim")
            try reader.require("norm_type", oneOf: ["group"])
            try reader.requireDefault("lookup_from_codebook", false)
        }
        try reader.rejectUnknownKeys()
        guard levels > 0, layersPerBlock > 0, blockOutChannels.allSatisfy({ $0 % normNumGroups == 0 }) else {
            throw DiffusionError("\(source): block_out_channels \(blockOutChannels) must be non-empty and divisible by norm_num_groups \(normNumGroups)")
        }
    }
}
