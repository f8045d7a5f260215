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

extension KernelRuntime {
    /// Self-attention with a residual connection on `input` `[batch, c, h, w]`.
    ///
    /// Feature maps stay channel-major (`[c, pixels]`), so q, k and v are rows of one
    /// 1x1 convolution and both products are single sgemm calls with a transpose flag.
    /// A task is (image, head, block of 64 queries).
    public func attention(_ input: Tensor, _ layer: AttentionLayer) -> Tensor {
        let batch = input.shape[0]
        let channels = layer.channels
        let pixels = input.shape[2] * input.shape[3]
        let headSize = channels / layer.heads
        let normalized = layer.norm.map { groupNorm(input, $0) } ?? input
        let qkv = conv2d(normalized, layer.queryKeyValue)
        let mixed = Tensor(uninitialized: input.shape)
        let queryBlock = min(pixels, 64)
        let queryBlocks = (pixels + queryBlock - 1) / queryBlock
        let scale = 1 / Float(headSize).squareRoot()
        countProduct(2 * batch * pixels, pixels, channels)
        pool.parallelFor(batch * layer.heads * queryBlocks) { task, worker in
            let image = task / (layer.heads * queryBlocks)
            let head = (task / queryBlocks) % layer.heads
            let first = (task % queryBlocks) * queryBlock
            let queries = min(queryBlock, pixels - first)
            let headOffset = head * headSize * pixels
            let q = qkv.data + image * qkv.sliceCount + headOffset
            let k = q + channels * pixels
            let v = k + channels * pixels
            let scores = scratch(worker: worker, count: queries * pixels)
            // scores[i, j] = q_iᵀ k_j / √d, for this block's queries i.
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(queries), Int32(pixels), Int32(headSize),
                        scale, q + first, Int32(pixels), k, Int32(pixels), 0, scores, Int32(pixels))
            for i in 0..<queries { softmaxInPlace(scores + i * pixels, count: pixels) }
            // out[:, i] = Σ_j v_j · p[i, j]
            let out = mixed.data + image * mixed.sliceCount + headOffset + first
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(headSize), Int32(queries), Int32(pixels),
                        1, v, Int32(pixels), scores, Int32(pixels), 0, out, Int32(pixels))
        }
        return conv2d(mixed, layer.output,
                      epilogue: ConvEpilogue(residual: input, outputScale: layer.rescaleOutputFactor))
    }
}

/// Softmax of one row, in float32 with a double-precision sum.
func softmaxInPlace(_ row: UnsafeMutablePointer<Float>, count: Int) {
    var peak = -Float.infinity
    for i in 0..<count { peak = max(peak, row[i]) }
    VectorMath.map(row, row, count: count) { VectorMath.exp($0 - peak) }
    let inverse = Float(1 / VectorMath.sum(row, count: count) { $0 })
    VectorMath.map(row, row, count: count) { $0 * inverse }
}
