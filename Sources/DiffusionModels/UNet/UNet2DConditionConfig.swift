import DiffusionKernels
import Foundation

/// `UNet2DConditionModel`'s config.json as Stable Diffusion 1.x and 2.x use it:
/// cross-attention blocks on text embeddings. Every key diffusers writes is
/// known; one that only other models use (SDXL's `addition_embed_type`, ...) is
/// refused at load naming the key. A class embedding is read as
/// `ClassEmbeddingType` (the x4 upscaler's noise level is one).
public struct UNet2DConditionConfig: Sendable, Equatable {
    public enum DownBlock: String, Sendable { case plain = "DownBlock2D", crossAttention = "CrossAttnDownBlock2D" }
    public enum UpBlock: String, Sendable { case plain = "UpBlock2D", crossAttention = "CrossAttnUpBlock2D" }

    public var sampleSize: [Int]?
    public var inChannels = 4
    public var outChannels = 4
    public var centerInputSample = false
    public var flipSinToCos = true
    public var freqShift: Float = 0
    public var downBlockTypes: [DownBlock] = [.crossAttention, .crossAttention, .crossAttention, .plain]
    public var upBlockTypes: [UpBlock] = [.plain, .crossAttention, .crossAttention, .crossAttention]
    public var blockOutChannels = [320, 640, 1280, 1280]
    /// Per level (an int in the config applies to every level).
    public var layersPerBlock = [2, 2, 2, 2]
    public var transformerLayersPerBlock = [1, 1, 1, 1]
    /// Attention heads per level (diffusers reads `attention_head_dim` as the head
    /// count when `num_attention_heads` is null, a naming it keeps for SD's configs).
    public var heads = [8, 8, 8, 8]
    public var downsamplePadding = 1
    public var midBlockScaleFactor: Float = 1
    public var normNumGroups = 32
    public var normEps: Float = 1e-5
    public var crossAttentionDim = 1280
    public var useLinearProjection = false
    public var timeEmbeddingDim: Int?
    public var classEmbedding: ClassEmbeddingType?

    public init() {}

    public var sampleShape: [Int] {
        let size = sampleSize ?? [64, 64]
        return [inChannels, size[0], size[1]]
    }

    public var timeEmbedDim: Int { timeEmbeddingDim ?? 4 * blockOutChannels[0] }

    /// How many times smaller the innermost level is than the sample.
    public var downsamplingFactor: Int { 1 << (blockOutChannels.count - 1) }

    public init(json data: Data, source: String) throws {
        var reader = try ConfigReader(json: data, source: source)
        sampleSize = try reader.sampleSize()
        inChannels = try reader.int("in_channels") ?? inChannels
        outChannels = try reader.int("out_channels") ?? outChannels
        centerInputSample = try reader.bool("center_input_sample") ?? centerInputSample
        flipSinToCos = try reader.bool("flip_sin_to_cos") ?? flipSinToCos
        freqShift = try reader.float("freq_shift") ?? freqShift
        downBlockTypes = try reader.names("down_block_types") ?? downBlockTypes
        upBlockTypes = try reader.names("up_block_types") ?? upBlockTypes
        try reader.require("mid_block_type", oneOf: ["UNetMidBlock2DCrossAttn"])
        blockOutChannels = try reader.ints("block_out_channels") ?? blockOutChannels
        let levels = blockOutChannels.count
        func perLevel(_ key: String, _ fallback: [Int]) throws -> [Int] {
            guard let raw = reader.value(key), !(raw is NSNull) else { return fallback }
            if let number = raw as? NSNumber { return [Int](repeating: number.intValue, count: levels) }
            guard let list = try reader.ints(key), list.count == levels else {
                throw DiffusionError("\(source): \(key) must be an integer or a list of \(levels), not \(ConfigReader.render(raw))")
            }
            return list
        }
        layersPerBlock = try perLevel("layers_per_block", [Int](repeating: 2, count: levels))
        transformerLayersPerBlock = try perLevel("transformer_layers_per_block", [Int](repeating: 1, count: levels))
        let headDims = try perLevel("attention_head_dim", [Int](repeating: 8, count: levels))
        heads = try perLevel("num_attention_heads", headDims)
        downsamplePadding = try reader.int("downsample_padding") ?? downsamplePadding
        midBlockScaleFactor = try reader.float("mid_block_scale_factor") ?? midBlockScaleFactor
        normNumGroups = try reader.int("norm_num_groups") ?? normNumGroups
        normEps = try reader.float("norm_eps") ?? normEps
        if let raw = reader.value("cross_attention_dim") {
            guard let dim = (raw as? NSNumber)?.intValue, dim > 0 else { throw reader.unsupported("cross_attention_dim", raw) }
            crossAttentionDim = dim
        }
        useLinearProjection = try reader.bool("use_linear_projection") ?? useLinearProjection
        timeEmbeddingDim = try reader.int("time_embedding_dim")
        // float32 throughout: upcasting attention to float32 changes nothing here
        _ = try reader.bool("upcast_attention")
        reader.ignore(["dropout", "addition_embed_type_num_heads"])
        try reader.require("act_fn", oneOf: ["silu", "swish"])
        try reader.require("resnet_time_scale_shift", oneOf: ["default"])
        try reader.require("time_embedding_type", oneOf: ["positional"])
        try reader.require("attention_type", oneOf: ["default"])
        try reader.requireDefault("only_cross_attention", false)
        try reader.requireDefault("dual_cross_attention", false)
        try reader.requireDefault("resnet_skip_time_act", false)
        try reader.requireDefault("resnet_out_scale_factor", 1)
        try reader.requireDefault("class_embeddings_concat", false)
        try reader.requireDefault("conv_in_kernel", 3)
        try reader.requireDefault("conv_out_kernel", 3)
        // keys only other models set (SDXL, unCLIP, ControlNet-style conditioning): null here
        classEmbedding = try ClassEmbeddingType.read(&reader)
        for key in ["addition_embed_type", "addition_time_embed_dim",
                    "encoder_hid_dim", "encoder_hid_dim_type", "projection_class_embeddings_input_dim",
                    "time_cond_proj_dim", "time_embedding_act_fn", "timestep_post_act", "cross_attention_norm",
                    "mid_block_only_cross_attention", "reverse_transformer_layers_per_block"] {
            if let raw = reader.value(key), !(raw is NSNull), !((raw as? NSNumber) == false) {
                throw DiffusionError("\(source): \(key) = \(ConfigReader.render(raw)) is not supported (a Stable Diffusion 1.x/2.x U-Net has it null)")
            }
        }
        try reader.rejectUnknownKeys()
        guard downBlockTypes.count == levels, upBlockTypes.count == levels else {
            throw DiffusionError("\(source): block_out_channels, down_block_types and up_block_types must have the same length")
        }
        if let bad = blockOutChannels.first(where: { $0 % normNumGroups != 0 }) {
            throw DiffusionError("\(source): block_out_channels \(bad) is not divisible by norm_num_groups \(normNumGroups)")
        }
        if let level = blockOutChannels.indices.first(where: { heads[$0] <= 0 || blockOutChannels[$0] % heads[$0] != 0 }) {
            throw DiffusionError("\(source): \(heads[level]) attention heads do not divide the \(blockOutChannels[level]) channels of level \(level)")
        }
        guard (0...1).contains(downsamplePadding) else {
            throw DiffusionError("\(source): downsample_padding \(downsamplePadding) is not supported (0 or 1 are)")
        }
    }
}
