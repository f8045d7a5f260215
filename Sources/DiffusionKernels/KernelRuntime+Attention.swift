import COpenBLAS

/// Spatial self-attention over the pixels of a feature map, diffusers' `Attention`
/// as UNet2DModel builds it: group norm, q/k/v projections, softmax(q·kᵀ/√d)·v per
/// head, output projection, then `(out + input) / rescaleOutputFactor`.
public struct AttentionLayer: Sendable {
    /// The group norm before q, k and v (none in diffusers' attention built without groups).
    public let norm: GroupNormLayer?
    /// The q, k and v projections stacked into one `[3c, c, 1, 1]` convolution.
    public let queryKeyValue: Conv2DLayer
    public let output: Conv2DLayer
    public let heads: Int
    public let rescaleOutputFactor: Float

    public init(norm: GroupNormLayer?, queryKeyValue: Conv2DLayer, output: Conv2DLayer, heads: Int,
                rescaleOutputFactor: Float) {
        precondition(queryKeyValue.outChannels == 3 * output.inChannels, "q/k/v must project to 3x the channels")
        precondition(output.inChannels % heads == 0, "\(output.inChannels) channels do not split into \(heads) heads")
        self.norm = norm
        self.queryKeyValue = queryKeyValue
        self.output = output
        self.heads = heads
        self.rescaleOutputFactor = rescaleOutputFactor
    }

    public var channels: Int { output.inChannels }
}

/// Channels `offset ..< offset + channels` of a channel-major `[batch, C, tokens...]`
/// tensor: where one of q, k or v sits in the output of a stacked projection.
public struct TokenRows {
    public let tensor: Tensor
    public let offset: Int
    public let channels: Int

    public init(_ tensor: Tensor, offset: Int = 0, channels: Int? = nil) {
        self.tensor = tensor
        self.offset = offset
        self.channels = channels ?? tensor.shape[1] - offset
    }

    var tokens: Int { tensor.sliceCount / tensor.shape[1] }

    func rows(image: Int) -> UnsafeMutablePointer<Float> {
        tensor.data + image * tensor.sliceCount + offset * tokens
    }
}

extension KernelRuntime {
    /// Self-attention with a residual connection on `input` `[batch, c, h, w]`.
    public func attention(_ input: Tensor, _ layer: AttentionLayer) -> Tensor {
        let channels = layer.channels
        let normalized = layer.norm.map { groupNorm(input, $0) } ?? input
        let qkv = conv2d(normalized, layer.queryKeyValue)
        let mixed = multiHeadAttention(
            query: TokenRows(qkv, channels: channels), key: TokenRows(qkv, offset: channels, channels: channels),
            value: TokenRows(qkv, offset: 2 * channels, channels: channels), heads: layer.heads, outputShape: input.shape)
        return conv2d(mixed, layer.output,
                      epilogue: ConvEpilogue(residual: input, outputScale: layer.rescaleOutputFactor))
    }

    /// softmax(qᵀk/√d)·v for each head of channel-major q `[c, Tq]` and k, v `[c, Tk]`
    /// of every image: the output `[batch, c, Tq]` (in `outputShape`, which must hold
    /// that many values). With `causal`, query i sees keys 0...i only (CLIP's text model).
    ///
    /// Feature maps stay channel-major, so both products are single sgemm calls
    /// with a transpose flag. A task is (image, head, block of 256 queries): the
    /// scores never exceed 256 × Tk per thread, whatever the image size, and k is
    /// packed once per block. Each row's softmax is left unnormalized (one pass
    /// for its peak, one for e^x and its sum); the output column is scaled by
    /// 1/sum instead, head-size values rather than Tk.
    public func multiHeadAttention(query: TokenRows, key: TokenRows, value: TokenRows, heads: Int, causal: Bool = false,
                                   outputShape: [Int]? = nil) -> Tensor {
        let batch = query.tensor.shape[0]
        let channels = query.channels
        precondition(key.channels == channels && value.channels == channels && key.tokens == value.tokens,
                     "attention of q (\(channels) channels), k (\(key.channels)) and v (\(value.channels)) of different shapes")
        precondition(channels % heads == 0, "\(channels) channels do not split into \(heads) heads")
        let (queries, keys) = (query.tokens, key.tokens)
        let headSize = channels / heads
        let mixed = Tensor(uninitialized: outputShape ?? [batch, channels, queries, 1])
        precondition(mixed.count == batch * channels * queries, "attention output \(mixed.shape) for \(batch)x\(channels)x\(queries)")
        let queryBlock = min(queries, 256)
        let queryBlocks = (queries + queryBlock - 1) / queryBlock
        let scale = 1 / Float(headSize).squareRoot()
        countProduct(2 * batch * queries, keys, channels)
        pool.parallelFor(batch * heads * queryBlocks) { task, worker in
            let image = task / (heads * queryBlocks)
            let head = (task / queryBlocks) % heads
            let first = (task % queryBlocks) * queryBlock
            let count = min(queryBlock, queries - first)
            let q = query.rows(image: image) + head * headSize * queries
            let k = key.rows(image: image) + head * headSize * keys
            let v = value.rows(image: image) + head * headSize * keys
            let scores = scratch(worker: worker, count: count * keys + count)
            let inverseSums = scores + count * keys
            // scores[i, j] = q_iᵀ k_j / √d, for this block's queries i.
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(count), Int32(keys), Int32(headSize),
                        scale, q + first, Int32(queries), k, Int32(keys), 0, scores, Int32(keys))
            for i in 0..<count {
                // a causal query i sees keys 0...i: the rest weigh nothing
                let seen = causal ? min(first + i + 1, keys) : keys
                inverseSums[i] = exponentiateInPlace(scores + i * keys, count: seen)
                if seen < keys { (scores + i * keys + seen).initialize(repeating: 0, count: keys - seen) }
            }
            // out[:, i] = Σ_j v_j · e[i, j] / Σ_j e[i, j]
            let out = mixed.data + image * channels * queries + head * headSize * queries + first
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(headSize), Int32(count), Int32(keys),
                        1, v, Int32(keys), scores, Int32(keys), 0, out, Int32(queries))
            for d in 0..<headSize {
                let row = out + d * queries
                for i in 0..<count { row[i] *= inverseSums[i] }
            }
        }
        return mixed
    }
}

/// e^(x − max) of one row in place; returns 1 / their sum (a double-precision
/// sum, in a fixed order), the row's softmax normalizer.
func exponentiateInPlace(_ row: UnsafeMutablePointer<Float>, count: Int) -> Float {
    var peaks = SIMD16<Float>(repeating: -.infinity)
    var i = 0
    while i + 16 <= count {
        peaks = pointwiseMax(peaks, UnsafeRawPointer(row + i).loadUnaligned(as: SIMD16<Float>.self))
        i += 16
    }
    var peak = peaks.max()
    while i < count {
        peak = max(peak, row[i])
        i += 1
    }
    VectorMath.map(row, row, count: count) { VectorMath.exp($0 - peak) }
    return Float(1 / VectorMath.sum(row, count: count) { $0 })
}
