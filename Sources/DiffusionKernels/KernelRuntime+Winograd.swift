import COpenBLAS

/// 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3)
/// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
///
/// Each 2x2 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A for the 4x4 input tile d that
/// covers it, so the products become 16 GEMMs `[out, in] x [in, tiles]`, one per
/// position of the 4x4 transformed tile, with 2.25x fewer multiplications than
/// im2col. The transforms use only ±1 and ½, and cost few rounding errors.
///
/// The work is cut by shape only, as everywhere: one task per (image, channel)
/// for the transforms and one per (image, position) for the GEMMs.
enum Winograd {
    /// Whether a convolution takes this path: 3x3, stride 1, padding 1, and an
    /// image and channel counts large enough for the 16 tile GEMMs to be efficient
    /// (with fewer channels the transforms cost more than they save: measured on a
    /// 16-64 channel 28x28 U-Net, im2col renders 35% faster).
    /// Tiles of one band: large enough for efficient GEMMs, small enough to stay in memory.
    static let bandTiles = 2048

    static func applies(to layer: Conv2DLayer, height: Int, width: Int) -> Bool {
        layer.isWinogradShape && layer.padding == .uniform(1) && height * width >= 256
            && layer.inChannels >= 64 && layer.outChannels >= 64
    }

    /// G g Gᵀ for the (out, in) filters `pairs` of `weight` `[out, in, 3, 3]`, into
    /// 16 matrices `[out, in]` of `count` pairs each. The layer keeps only its
    /// plain filters (the transformed ones are 16/9 of their size, gigabytes at
    /// Stable Diffusion's); this costs about 1/(2·tiles) of the GEMMs it feeds.
    static func transformWeights(_ weight: UnsafePointer<Float>, pairs: Range<Int>, count: Int,
                                 into result: UnsafeMutablePointer<Float>) {
        // G g (rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2 of each 3x3 filter), then
        // (G g) Gᵀ (the same along each row), one of the 16 outputs at a time over
        // every pair of the range: contiguous writes the loops vectorize.
        let first = pairs.lowerBound
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 12 * pairs.count) { temporary in
            let rows = temporary.baseAddress!
            for (n, pair) in pairs.enumerated() {
                let g = weight + pair * 9
                for column in 0..<3 {
                    let (a, b, c) = (g[column], g[3 + column], g[6 + column])
                    rows[column * pairs.count + n] = a
                    rows[(3 + column) * pairs.count + n] = (a + b + c) / 2
                    rows[(6 + column) * pairs.count + n] = (a - b + c) / 2
                    rows[(9 + column) * pairs.count + n] = c
                }
            }
            for row in 0..<4 {
                let (a, b, c) = (rows + 3 * row * pairs.count, rows + (3 * row + 1) * pairs.count,
                                 rows + (3 * row + 2) * pairs.count)
                let out = result + row * 4 * count + first
                let (out1, out2, out3) = (out + count, out + 2 * count, out + 3 * count)
                for n in 0..<pairs.count {
                    out[n] = a[n]
                    out1[n] = (a[n] + b[n] + c[n]) / 2
                    out2[n] = (a[n] - b[n] + c[n]) / 2
                    out3[n] = c[n]
                }
            }
        }
    }
}

extension KernelRuntime {
    func winogradConv2d(
        _ input: Tensor, _ layer: Conv2DLayer, upsampleInput: Bool, epilogue: ConvEpilogue
    ) -> Tensor {
        let batch = input.shape[0]
        let (storedHeight, storedWidth) = (input.shape[2], input.shape[3])
        let scale = upsampleInput ? 2 : 1
        let (height, width) = (storedHeight * scale, storedWidth * scale)
        let (inChannels, outChannels) = (layer.inChannels, layer.outChannels)
        let (tilesY, tilesX) = ((height + 1) / 2, (width + 1) / 2)
        // Large images go in bands of tile rows, so the tiles' workspace stays near
        // 16·(in + out)·2048 floats (a 512x512 decoder layer would take 1.6 GB at
        // once); the band depends on the width alone, and splitting a GEMM's
        // columns keeps every column's bits.
        let bandRows = max(1, Winograd.bandTiles / tilesX)
        let tiles = min(bandRows, tilesY) * tilesX
        let transformed = workspace(0, count: batch * 16 * inChannels * tiles)
        let products = workspace(1, count: batch * 16 * outChannels * tiles)
        let output = Tensor(uninitialized: [batch, outChannels, height, width])
        // Counted as the direct convolution it replaces, as benchmarks compare.
        countProduct(batch * outChannels, height * width, 9 * inChannels)

        // 0. U = G g Gᵀ, once for every band.
        let pairs = outChannels * inChannels
        let weights = workspace(2, count: 16 * pairs)
        let chunk = 4096
        pool.parallelFor((pairs + chunk - 1) / chunk) { task, _ in
            Winograd.transformWeights(layer.weight.data, pairs: (task * chunk)..<min((task + 1) * chunk, pairs), count: pairs,
                                      into: weights)
        }
        for firstRow in stride(from: 0, to: tilesY, by: bandRows) {
            let bandRange = firstRow..<min(firstRow + bandRows, tilesY)
            transformTiles(input, rows: bandRange, tilesX: tilesX, height: height, width: width, scale: scale,
                           into: transformed)
            multiplyTiles(weights, transformed, into: products, batch: batch, inChannels: inChannels,
                          outChannels: outChannels, tiles: bandRange.count * tilesX)
            writeTiles(products, rows: bandRange, tilesX: tilesX, layer: layer, epilogue: epilogue, into: output)
        }
        return output
    }

    /// 1. V = Bᵀ d B for every 4x4 input tile d of tile rows `rows` (input rows
    /// 2ty-1 ... 2ty+2, zero outside). Per tile row: Bᵀ combines four padded input
    /// rows with whole-row vector ops, then B combines columns 2tx-1 ... 2tx+2 of
    /// those into 16 rows of tiles.
    private func transformTiles(_ input: Tensor, rows tileRows: Range<Int>, tilesX: Int, height: Int, width: Int, scale: Int,
                                into transformed: UnsafeMutablePointer<Float>) {
        let (batch, inChannels) = (input.shape[0], input.shape[1])
        let (storedHeight, storedWidth) = (input.shape[2], input.shape[3])
        let tiles = tileRows.count * tilesX

        let padded = 2 * tilesX + 2
        pool.parallelFor(batch * inChannels) { task, worker in
            let (image, channel) = (task / inChannels, task % inChannels)
            let plane = input.data + (image * inChannels + channel) * storedHeight * storedWidth
            let destination = transformed + (image * 16 * inChannels + channel) * tiles
            let stride = inChannels * tiles
            let buffer = scratch(worker: worker, count: 8 * padded)
            let rows = buffer, combined = buffer + 4 * padded
            for ty in tileRows {
                for r in 0..<4 {
                    let row = rows + r * padded
                    let y = 2 * ty - 1 + r
                    guard y >= 0 && y < height else {
                        row.initialize(repeating: 0, count: padded)
                        continue
                    }
                    let source = plane + (y / scale) * storedWidth
                    row[0] = 0
                    if scale == 1 {
                        (row + 1).update(from: source, count: width)
                    } else {
                        for x in 0..<width { row[1 &+ x] = source[x &>> 1] }
                    }
                    for x in (width + 1)..<padded { row[x] = 0 }
                }
                let (d0, d1, d2, d3) = (rows, rows + padded, rows + 2 * padded, rows + 3 * padded)
                let (t0, t1, t2, t3) = (combined, combined + padded, combined + 2 * padded, combined + 3 * padded)
                for x in 0..<padded {
                    t0[x] = d0[x] - d2[x]
                    t1[x] = d1[x] + d2[x]
                    t2[x] = d2[x] - d1[x]
                    t3[x] = d1[x] - d3[x]
                }
                for r in 0..<4 {
                    let t = combined + r * padded
                    let out = destination + 4 * r * stride + (ty - tileRows.lowerBound) * tilesX
                    let (out1, out2, out3) = (out + stride, out + 2 * stride, out + 3 * stride)
                    // Wrapping index arithmetic: overflow checks would stop vectorization.
                    for tx in 0..<tilesX {
                        let x = 2 &* tx
                        let (a, b, c, d) = (t[x], t[x &+ 1], t[x &+ 2], t[x &+ 3])
                        out[tx] = a - c
                        out1[tx] = b + c
                        out2[tx] = c - b
                        out3[tx] = b - d
                    }
                }
            }
        }

    }

    /// 2. M_ξ = U_ξ V_ξ for each of the 16 positions ξ, per image.
    private func multiplyTiles(_ weights: UnsafePointer<Float>, _ transformed: UnsafePointer<Float>,
                               into products: UnsafeMutablePointer<Float>, batch: Int, inChannels: Int, outChannels: Int,
                               tiles: Int) {
        let pairs = outChannels * inChannels
        pool.parallelFor(batch * 16) { task, _ in
            let (image, position) = (task / 16, task % 16)
            cblas_sgemm(
                CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(outChannels), Int32(tiles), Int32(inChannels), 1,
                weights + position * pairs, Int32(inChannels),
                transformed + (image * 16 + position) * inChannels * tiles, Int32(tiles), 0,
                products + (image * 16 + position) * outChannels * tiles, Int32(tiles))
        }
    }

    /// 3. Y = Aᵀ M A per tile row of `rows`: Aᵀ combines the 16 rows of tiles into
    /// 8 with vector ops (m0 + m1 + m2, m1 - m2 - m3), A then yields two output
    /// rows, and the epilogue runs as they are copied out.
    private func writeTiles(_ products: UnsafePointer<Float>, rows tileRows: Range<Int>, tilesX: Int, layer: Conv2DLayer,
                            epilogue: ConvEpilogue, into output: Tensor) {
        let (batch, outChannels, height, width) = (output.shape[0], output.shape[1], output.shape[2], output.shape[3])
        let tiles = tileRows.count * tilesX
        let divisor = epilogue.outputScale
        pool.parallelFor(batch * outChannels) { task, worker in
            let (image, channel) = (task / outChannels, task % outChannels)
            let source = products + (image * 16 * outChannels + channel) * tiles
            let stride = outChannels * tiles
            var add = layer.bias?.data[channel] ?? 0
            if let channelBias = epilogue.channelBias { add += channelBias.data[image * outChannels + channel] }
            let offset = (image * outChannels + channel) * height * width
            let out = output.data + offset
            let skip = epilogue.residual.map { $0.data + offset }
            let buffer = scratch(worker: worker, count: 8 * tilesX + 2 * 2 * tilesX)
            let lines = buffer + 8 * tilesX
            for ty in tileRows {
                let m = source + (ty - tileRows.lowerBound) * tilesX
                for j in 0..<4 {
                    let (m0, m1, m2, m3) = (m + j * stride, m + (4 + j) * stride, m + (8 + j) * stride, m + (12 + j) * stride)
                    let (s0, s1) = (buffer + j * tilesX, buffer + (4 + j) * tilesX)
                    for tx in 0..<tilesX {
                        s0[tx] = m0[tx] + m1[tx] + m2[tx]
                        s1[tx] = m1[tx] - m2[tx] - m3[tx]
                    }
                }
                for r in 0..<2 {
                    let s = buffer + 4 * r * tilesX
                    let (a, b, c, d) = (s, s + tilesX, s + 2 * tilesX, s + 3 * tilesX)
                    let line = lines + r * 2 * tilesX
                    for tx in 0..<tilesX {
                        line[2 &* tx] = a[tx] + b[tx] + c[tx]
                        line[2 &* tx &+ 1] = b[tx] - c[tx] - d[tx]
                    }
                    let y = 2 * ty + r
                    guard y < height else { continue }
                    let target = out + y * width
                    if let skip {
                        let residual = skip + y * width
                        for x in 0..<width { target[x] = (residual[x] + (line[x] + add)) / divisor }
                    } else {
                        for x in 0..<width { target[x] = line[x] + add }
                    }
                }
            }
        }
    }
}
