import DiffusionKernels
import Foundation

/// transformers' `CLIPTextConfig` (text_encoder/config.json), the keys that shape
/// the model; a key that would change the result at another value is refused.
public struct CLIPTextConfig: Sendable, Equatable {
    public var vocabSize = 49408
    public var hiddenSize = 512
    public var intermediateSize = 2048
    public var layers = 12
    public var heads = 8
    public var maxPositions = 77
    public var activation = KernelRuntime.Activation.quickGelu
    public var layerNormEps: Float = 1e-5

    public init() {}

    public init(json data: Data, source: String) throws {
        var reader = try ConfigReader(json: data, source: source)
        vocabSize = try reader.int("vocab_size") ?? vocabSize
        hiddenSize = try reader.int("hidden_size") ?? hiddenSize
        intermediateSize = try reader.int("intermediate_size") ?? intermediateSize
        layers = try reader.int("num_hidden_layers") ?? layers
        heads = try reader.int("num_attention_heads") ?? heads
        maxPositions = try reader.int("max_position_embeddings") ?? maxPositions
        if let name = try reader.require("hidden_act", oneOf: ["quick_gelu", "gelu"]) {
            activation = KernelRuntime.Activation(rawValue: name)!
        }
        layerNormEps = try reader.float("layer_norm_eps") ?? layerNormEps
        try reader.require("model_type", oneOf: ["clip_text_model"])
        try reader.requireDefault("use_attention_mask", false)
        reader.ignore(["architectures", "attention_dropout", "dropout", "bos_token_id", "eos_token_id", "pad_token_id",
                       "initializer_factor", "initializer_range", "projection_dim", "dtype", "torch_dtype",
                       "transformers_version", "output_hidden_states", "return_dict"])
        try reader.rejectUnknownKeys()
        guard [vocabSize, hiddenSize, intermediateSize, layers, heads, maxPositions].allSatisfy({ $0 > 0 }),
              hiddenSize % heads == 0
        else {
            throw DiffusionError("\(source): sizes must be positive and hidden_size \(hiddenSize) divisible by num_attention_heads \(heads)")
        }
    }
}

/// transformers' `CLIPTextModel`: token and position embeddings, pre-norm
/// transformer layers with causal self-attention and a `quick_gelu` or `gelu`
/// MLP, then the final layer norm; its `last_hidden_state` is what a Stable
/// Diffusion U-Net reads. Weights under either naming transformers has used
/// (`text_model.` prefixed, or not).
public final class CLIPTextModel: Sendable {
    struct Layer: Sendable {
        let norm1: LayerNormLayer
        let queryKeyValue: Conv2DLayer
        let output: Conv2DLayer
        let norm2: LayerNormLayer
        let fc1: Conv2DLayer
        let fc2: Conv2DLayer
    }

    public let config: CLIPTextConfig
    let tokenEmbedding: Tensor
    let positionEmbedding: Tensor
    let layers: [Layer]
    let finalNorm: LayerNormLayer

    public init(config: CLIPTextConfig, weights: any WeightSource) throws {
        self.config = config
        var w = WeightReader(source: weights)
        let prefix = weights.contains("text_model.embeddings.token_embedding.weight") ? "text_model." : ""
        let (hidden, eps) = (config.hiddenSize, config.layerNormEps)
        tokenEmbedding = try w.tensor("\(prefix)embeddings.token_embedding.weight", shape: [config.vocabSize, hidden])
        positionEmbedding = try w.tensor("\(prefix)embeddings.position_embedding.weight", shape: [config.maxPositions, hidden])
        w.ignore("\(prefix)embeddings.position_ids")
        layers = try (0..<config.layers).map { index in
            let p = "\(prefix)encoder.layers.\(index)"
            return Layer(
                norm1: try w.layerNorm("\(p).layer_norm1", channels: hidden, epsilon: eps),
                queryKeyValue: try w.stackedPointwise(["q_proj", "k_proj", "v_proj"].map { "\(p).self_attn.\($0)" },
                                                      in: hidden, out: hidden),
                output: try w.pointwise("\(p).self_attn.out_proj", in: hidden, out: hidden),
                norm2: try w.layerNorm("\(p).layer_norm2", channels: hidden, epsilon: eps),
                fc1: try w.pointwise("\(p).mlp.fc1", in: hidden, out: config.intermediateSize),
                fc2: try w.pointwise("\(p).mlp.fc2", in: config.intermediateSize, out: hidden))
        }
        finalNorm = try w.layerNorm("\(prefix)final_layer_norm", channels: hidden, epsilon: eps)
        try w.rejectUnused()
    }

    /// `last_hidden_state` of each image's ids, channel-major `[n, hidden, tokens, 1]`.
    public func encode(_ ids: [[Int]], on k: KernelRuntime) throws -> Tensor {
        let tokens = ids.first?.count ?? 0
        guard tokens > 0, tokens <= config.maxPositions, ids.allSatisfy({ $0.count == tokens }) else {
            throw DiffusionError("the text encoder takes 1...\(config.maxPositions) token ids per prompt, all prompts alike")
        }
        let hidden = config.hiddenSize
        var x = Tensor(uninitialized: [ids.count, hidden, tokens, 1])
        for (image, row) in ids.enumerated() {
            for (t, id) in row.enumerated() {
                guard (0..<config.vocabSize).contains(id) else { throw DiffusionError("token id \(id) outside the vocabulary of \(config.vocabSize)") }
                for c in 0..<hidden {
                    x.data[(image * hidden + c) * tokens + t] = tokenEmbedding.data[id * hidden + c] + positionEmbedding.data[t * hidden + c]
                }
            }
        }
        for layer in layers {
            let qkv = k.conv2d(k.layerNorm(x, layer.norm1), layer.queryKeyValue)
            let mixed = k.multiHeadAttention(
                query: TokenRows(qkv, channels: hidden), key: TokenRows(qkv, offset: hidden, channels: hidden),
                value: TokenRows(qkv, offset: 2 * hidden, channels: hidden), heads: config.heads, causal: true,
                outputShape: x.shape)
            x = k.conv2d(mixed, layer.output, epilogue: ConvEpilogue(residual: x))
            let inner = k.activate(k.conv2d(k.layerNorm(x, layer.norm2), layer.fc1), config.activation)
            x = k.conv2d(inner, layer.fc2, epilogue: ConvEpilogue(residual: x))
        }
        return k.layerNorm(x, finalNorm)
    }
}
