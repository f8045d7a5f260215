import DiffusionKernels
import Foundation

/// `UNet2DModel`'s config.json, as diffusers writes it.
///
/// diffusers writes every constructor argument, so the parser knows them all:
/// a key is accepted only at the values this runtime implements, and any other
/// value, or an unknown key, is an error naming both. Keys starting with `_` are
/// diffusers' bookkeeping and are ignored.
public struct UNet2DConfig: Sendable, Equatable {
    /// The block types; the skip ones are NCSN++'s (FIR resampling, the image
    /// carried beside the features).
    public enum DownBlock: String, Sendable {
        case plain = "DownBlock2D", attention = "AttnDownBlock2D"
        case skip = "SkipDownBlock2D", attentionSkip = "AttnSkipDownBlock2D"
    }
    public enum UpBlock: String, Sendable {
        case plain = "UpBlock2D", attention = "AttnUpBlock2D"
        case skip = "SkipUpBlock2D", attentionSkip = "AttnSkipUpBlock2D"
    }

    public var sampleSize: [Int]?
    public var inChannels = 3
    public var outChannels = 3
    public var centerInputSample = false
    public var timeEmbeddingDim: Int?
    /// `time_embedding_type` "fourier" (NCSN++'s Gaussian Fourier features of
    /// log σ, whose model output is divided by σ) rather than "positional".
    public var fourierTimeEmbedding = false
    public var freqShift: Float = 0
    public var flipSinToCos = true
    public var downBlockTypes: [DownBlock] = [.plain, .attention, .attention, .attention]
    public var upBlockTypes: [UpBlock] = [.attention, .attention, .attention, .plain]
    public var hasMidBlock = true
    public var blockOutChannels = [224, 448, 672, 896]
    public var layersPerBlock = 2
    public var midBlockScaleFactor: Float = 1
    public var downsamplePadding = 1
    public var attentionHeadDim: Int? = 8
    public var normNumGroups = 32
    /// `resnet_time_scale_shift: "scale_shift"`: the time embedding scales and
    /// shifts each resnet's second norm (FiLM) instead of adding to its first conv.
    public var timeScaleShift = false
    /// `norm_num_groups: null` (NCSN++): each norm takes min(channels/4, 32) groups.
    public var normGroupsFromChannels = false
    public var attnNormNumGroups: Int?
    public var normEps: Float = 1e-5
    public var addAttention = true
    /// `num_class_embeds` labels, or with `class_embed_type: "timestep"` a level
    /// fed through the time embedding's features (a super-resolution stage's
    /// augmentation level).
    public var classEmbedding: ClassEmbeddingType?

    /// The labels of a class table (nil without one, or for a "timestep" input).
    public var numClassEmbeds: Int? {
        get { if case .table(let count)? = classEmbedding { count } else { nil } }
        set { classEmbedding = newValue.map { .table(count: $0) } }
    }

    public init() {}

    /// The width of the time embedding that every resnet receives.
    /// One sample's shape `[in_channels, height, width]` (diffusers' default size is 32).
    public var sampleShape: [Int] {
        let size = sampleSize ?? [32, 32]
        return [inChannels, size[0], size[1]]
    }

    public var timeEmbedDim: Int { timeEmbeddingDim ?? blockOutChannels[0] * 4 }

    /// The width of the time features the time embedding's first linear reads.
    public var timeFeatureDim: Int { fourierTimeEmbedding ? 2 * blockOutChannels[0] : blockOutChannels[0] }

    /// The groups of a norm over `channels` outside the skip blocks' own rules.
    public func normGroups(_ channels: Int) -> Int { normGroupsFromChannels ? min(channels / 4, 32) : normNumGroups }

    public init(json data: Data, source: String) throws {
        var reader = try ConfigReader(json: data, source: source)
        sampleSize = try reader.sampleSize()
        inChannels = try reader.int("in_channels") ?? inChannels
        outChannels = try reader.int("out_channels") ?? outChannels
        centerInputSample = try reader.bool("center_input_sample") ?? centerInputSample
        fourierTimeEmbedding = try reader.require("time_embedding_type", oneOf: ["positional", "fourier"]) == "fourier"
        timeEmbeddingDim = try reader.int("time_embedding_dim")
        freqShift = try reader.float("freq_shift") ?? freqShift
        flipSinToCos = try reader.bool("flip_sin_to_cos") ?? flipSinToCos
        downBlockTypes = try reader.names("down_block_types") ?? downBlockTypes
        upBlockTypes = try reader.names("up_block_types") ?? upBlockTypes
        switch reader.value("mid_block_type") {
        case nil, "UNetMidBlock2D" as String: hasMidBlock = true
        case is NSNull: hasMidBlock = false
        case let other?: throw reader.unsupported("mid_block_type", other)
        }
        blockOutChannels = try reader.ints("block_out_channels") ?? blockOutChannels
        layersPerBlock = try reader.int("layers_per_block") ?? layersPerBlock
        midBlockScaleFactor = try reader.float("mid_block_scale_factor") ?? midBlockScaleFactor
        downsamplePadding = try reader.int("downsample_padding") ?? downsamplePadding
        try reader.require("downsample_type", oneOf: ["conv"])
        try reader.require("upsample_type", oneOf: ["conv"])
        _ = try reader.float("dropout")
        try reader.require("act_fn", oneOf: ["silu", "swish"])
        if reader.keys["attention_head_dim"] != nil {
            attentionHeadDim = try reader.int("attention_head_dim")
        }
        normGroupsFromChannels = reader.keys["norm_num_groups"] is NSNull
        normNumGroups = try reader.int("norm_num_groups") ?? normNumGroups
        attnNormNumGroups = try reader.int("attn_norm_num_groups")
        normEps = try reader.float("norm_eps") ?? normEps
        timeScaleShift = try reader.require("resnet_time_scale_shift", oneOf: ["default", "scale_shift"]) == "scale_shift"
        addAttention = try reader.bool("add_attention") ?? addAttention
        classEmbedding = try ClassEmbeddingType.read(&reader)
        _ = try reader.int("num_train_timesteps")
        try reader.rejectUnknownKeys()
        try validate(source: source)
    }

    private func validate(source: String) throws {
        let levels = blockOutChannels.count
        guard levels > 0, downBlockTypes.count == levels, upBlockTypes.count == levels else {
            throw DiffusionError("\(source): block_out_channels, down_block_types and up_block_types must have the same length, not \(levels), \(downBlockTypes.count) and \(upBlockTypes.count)")
        }
        guard layersPerBlock >= 1, inChannels >= 1, outChannels >= 1, normNumGroups >= 1 else {
            throw DiffusionError("\(source): layers_per_block, in_channels, out_channels and norm_num_groups must be positive")
        }
        let plain: Set<DownBlock> = [.plain, .attention]
        if normGroupsFromChannels, let bad = zip(downBlockTypes, upBlockTypes).first(where: {
            plain.contains($0.0) || $0.1 == .plain || $0.1 == .attention
        }) {
            throw DiffusionError("\(source): norm_num_groups null needs skip blocks throughout, not \(bad.0.rawValue) / \(bad.1.rawValue)")
        }
        if !normGroupsFromChannels, let bad = blockOutChannels.first(where: { $0 % normNumGroups != 0 }) {
            throw DiffusionError("\(source): block_out_channels \(bad) is not divisible by norm_num_groups \(normNumGroups)")
        }
        guard (0...1).contains(downsamplePadding) else {
            throw DiffusionError("\(source): downsample_padding \(downsamplePadding) is not supported (0 or 1 are)")
        }
        // Only the blocks that have attention split their channels into heads.
        var attended = zip(blockOutChannels, downBlockTypes).filter { $0.1 == .attention || $0.1 == .attentionSkip }.map(\.0)
        attended += zip(blockOutChannels.reversed(), upBlockTypes).filter { $0.1 == .attention || $0.1 == .attentionSkip }.map(\.0)
        if hasMidBlock && addAttention { attended.append(blockOutChannels[levels - 1]) }
        if let head = attentionHeadDim, let bad = attended.first(where: { head <= 0 || $0 % head != 0 }) {
            throw DiffusionError("\(source): attention_head_dim \(head) does not divide the \(bad) channels of an attention block")
        }
        if let groups = attnNormNumGroups, let last = blockOutChannels.last, groups <= 0 || last % groups != 0 {
            throw DiffusionError("\(source): attn_norm_num_groups \(groups) does not divide \(last) channels")
        }
        if classEmbedding == .timestep && fourierTimeEmbedding {
            throw DiffusionError("\(source): class_embed_type \"timestep\" with Fourier time features is not supported")
        }
    }
}
