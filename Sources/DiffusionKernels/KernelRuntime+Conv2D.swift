import COpenBLAS

/// What a convolution adds to its raw result, while the tile is still in cache:
/// `y = conv + bias[c] + channelBias[b, c]`, then `y = (residual + y) / outputScale`.
public struct ConvEpilogue {
    /// `[batch, out]`, added per image and channel (a resnet's time embedding).
    public var channelBias: Tensor?
    /// Same shape as the output, added after the bias (a skip connection).
    public var residual: Tensor?
    /// Divides the sum with `residual` (diffusers' `output_scale_factor`).
    public var outputScale: Float

    public init(channelBias: Tensor? = nil, residual: Tensor? = nil, outputScale: Float = 1) {
        self.channelBias = channelBias
        self.residual = residual
        self.outputScale = outputScale
    }
}

extension KernelRuntime {
    /// 2D convolution of `input` `[batch, in, h, w]` as im2col and one sgemm per tile.
    ///
    /// With `upsampleInput` the input is first enlarged 2x by nearest neighbour,
    /// without materializing it: the im2col reads each source pixel twice.
    /// A 1x1 convolution with stride 1 multiplies the input directly.
    public func conv2d(
        _ input: Tensor, _ layer: Conv2DLayer, upsampleInput: Bool = false, epilogue: ConvEpilogue = ConvEpilogue()
    ) -> Tensor {
        precondition(input.shape.count == 4 && input.shape[1] == layer.inChannels,
                     "convolution of \(layer.inChannels) channels applied to \(input.shape)")
        let batch = input.shape[0]
        let scale = upsampleInput ? 2 : 1
        if Winograd.applies(to: layer, height: input.shape[2] * scale, width: input.shape[3] * scale) {
            return winogradConv2d(input, layer, upsampleInput: upsampleInput, epilogue: epilogue)
        }
        let geometry = ConvGeometry(
            inChannels: layer.inChannels, inHeight: input.shape[2] * scale, inWidth: input.shape[3] * scale,
            kernelHeight: layer.kernelHeight, kernelWidth: layer.kernelWidth, stride: layer.stride,
            padding: layer.padding, upsampled: upsampleInput)
        let outChannels = layer.outChannels
        let pixels = geometry.outHeight * geometry.outWidth
        let output = Tensor(uninitialized: [batch, outChannels, geometry.outHeight, geometry.outWidth])
        if let residual = epilogue.residual {
            precondition(residual.shape == output.shape, "residual \(residual.shape) for output \(output.shape)")
        }
        if let channelBias = epilogue.channelBias {
            precondition(channelBias.shape == [batch, outChannels], "channel bias \(channelBias.shape) for \(output.shape)")
        }

        let depth = geometry.depth
        countProduct(batch * outChannels, pixels, depth)
        let direct = geometry.isPointwise
        let tiles = GemmTiling(rows: outChannels, columns: pixels)
        let inputImage = input.sliceCount
        let outputImage = output.sliceCount
        pool.parallelFor(batch * tiles.perImage) { task, worker in
            let image = task / tiles.perImage
            let (rows, columns) = tiles.ranges(of: task % tiles.perImage)
            let source = input.data + image * inputImage
            let b: UnsafePointer<Float>
            let ldb: Int
            if direct {
                b = UnsafePointer(source + columns.lowerBound)
                ldb = pixels
            } else {
                let columnsBuffer = scratch(worker: worker, count: depth * columns.count)
                geometry.im2col(source, columns: columns, into: columnsBuffer)
                b = UnsafePointer(columnsBuffer)
                ldb = columns.count
            }
            let c = output.data + image * outputImage + rows.lowerBound * pixels + columns.lowerBound
            cblas_sgemm(
                CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows.count), Int32(columns.count), Int32(depth),
                1, layer.weight.data + rows.lowerBound * depth, Int32(depth), b, Int32(ldb), 0, c, Int32(pixels))
            applyEpilogue(
                epilogue, layer: layer, image: image, rows: rows, columns: columns, pixels: pixels, output: c,
                residual: epilogue.residual.map { $0.data + (c - output.data) })
        }
        return output
    }

    private func applyEpilogue(
        _ epilogue: ConvEpilogue, layer: Conv2DLayer, image: Int, rows: Range<Int>, columns: Range<Int>,
        pixels: Int, output: UnsafeMutablePointer<Float>, residual: UnsafeMutablePointer<Float>?
    ) {
        let scale = epilogue.outputScale
        for (offset, row) in rows.enumerated() {
            var add = layer.bias?.data[row] ?? 0
            if let channelBias = epilogue.channelBias { add += channelBias.data[image * layer.outChannels + row] }
            let line = output + offset * pixels
            if let residual {
                let skip = residual + offset * pixels
                if scale == 1 {
                    for i in 0..<columns.count { line[i] = skip[i] + (line[i] + add) }
                } else {
                    for i in 0..<columns.count { line[i] = (skip[i] + (line[i] + add)) / scale }
                }
            } else if add != 0 {
                for i in 0..<columns.count { line[i] += add }
            }
        }
    }
}

/// How one image's GEMM `[rows x columns]` is cut into tasks.
///
/// The cut depends on the GEMM's shape alone, so each tile is the same sgemm call
/// whatever the batch size and thread count: OpenBLAS picks its kernels by shape,
/// and a tile's bits stay put only if its call does. Columns (pixels) are cut
/// first, into halves down to 64 wide, so that one image keeps two cores busy,
/// and at most 8192 wide, so that a tile's im2col stays tens of megabytes (a
/// 512x512 decoder's last convolution would unfold 600 MB a thread); rows are
/// halved when an image has too few pixels to cut.
struct GemmTiling {
    let rows: Int
    let columns: Int
    let rowTile: Int
    let columnTile: Int

    static let maximumColumnTile = 8192

    init(rows: Int, columns: Int) {
        self.rows = rows
        self.columns = columns
        columnTile = columns >= 128 ? min((columns + 1) / 2, Self.maximumColumnTile) : columns
        rowTile = columns < 128 && rows >= 128 ? (rows + 1) / 2 : rows
    }

    var rowTiles: Int { (rows + rowTile - 1) / rowTile }
    var columnTiles: Int { (columns + columnTile - 1) / columnTile }
    var perImage: Int { rowTiles * columnTiles }

    func ranges(of tile: Int) -> (rows: Range<Int>, columns: Range<Int>) {
        let r = (tile / columnTiles) * rowTile
        let c = (tile % columnTiles) * columnTile
        return (r..<min(r + rowTile, rows), c..<min(c + columnTile, columns))
    }
}

/// The shape of one convolution, and its im2col.
struct ConvGeometry {
    let inChannels, inHeight, inWidth: Int
    let kernelHeight, kernelWidth, stride: Int
    let padding: Padding
    /// The input is stored at half resolution and read as if enlarged 2x.
    let upsampled: Bool

    var outHeight: Int { (inHeight + padding.top + padding.bottom - kernelHeight) / stride + 1 }
    var outWidth: Int { (inWidth + padding.left + padding.right - kernelWidth) / stride + 1 }
    var depth: Int { inChannels * kernelHeight * kernelWidth }
    var isPointwise: Bool {
        kernelHeight == 1 && kernelWidth == 1 && stride == 1 && !upsampled && padding == .uniform(0)
    }

    /// Writes rows `(channel, ky, kx)` by columns `columns` (output pixels) of the
    /// unfolded input into `destination`, `columns.count` floats per row.
    func im2col(_ source: UnsafePointer<Float>, columns: Range<Int>, into destination: UnsafeMutablePointer<Float>) {
        let storedWidth = upsampled ? inWidth / 2 : inWidth
        let storedPlane = storedWidth * (upsampled ? inHeight / 2 : inHeight)
        let firstRow = columns.lowerBound / outWidth
        let lastRow = (columns.upperBound - 1) / outWidth
        var out = destination
        for channel in 0..<inChannels {
            let plane = source + channel * storedPlane
            for ky in 0..<kernelHeight {
                for kx in 0..<kernelWidth {
                    // Output columns whose input pixel falls inside the image.
                    let validStart = max(0, (padding.left - kx + stride - 1) / stride)
                    let validEnd = min(outWidth, (inWidth + padding.left - kx + stride - 1) / stride)
                    for oy in firstRow...lastRow {
                        let start = oy == firstRow ? columns.lowerBound - oy * outWidth : 0
                        let end = oy == lastRow ? columns.upperBound - oy * outWidth : outWidth
                        let iy = oy * stride + ky - padding.top
                        if iy < 0 || iy >= inHeight {
                            fill(out, end - start)
                            out += end - start
                            continue
                        }
                        let lo = min(max(start, validStart), end)
                        let hi = max(min(end, validEnd), lo)
                        fill(out, lo - start)
                        let dst = out + (lo - start)
                        if upsampled {
                            let line = plane + (iy / 2) * storedWidth
                            for ox in lo..<hi { dst[ox - lo] = line[(ox * stride + kx - padding.left) / 2] }
                        } else {
                            let line = plane + iy * storedWidth
                            if stride == 1 {
                                copy(line + (lo + kx - padding.left), dst, hi - lo)
                            } else {
                                for ox in lo..<hi { dst[ox - lo] = line[ox * stride + kx - padding.left] }
                            }
                        }
                        fill(out + (hi - start), end - hi)
                        out += end - start
                    }
                }
            }
        }
    }
}

extension KernelRuntime {
    /// The gradient of a convolution with respect to its input: for `outputGradient`
    /// `[batch, out, oh, ow]`, the `[batch, in, h, w]` tensor Σ Wᵀ·g, folded back onto
    /// the input pixels (col2im). One task per image: a GEMM, then the fold.
    public func conv2dInputGradient(_ outputGradient: Tensor, _ layer: Conv2DLayer, inputHeight: Int, inputWidth: Int)
        -> Tensor
    {
        let batch = outputGradient.shape[0]
        let geometry = ConvGeometry(
            inChannels: layer.inChannels, inHeight: inputHeight, inWidth: inputWidth, kernelHeight: layer.kernelHeight,
            kernelWidth: layer.kernelWidth, stride: layer.stride, padding: layer.padding, upsampled: false)
        let pixels = geometry.outHeight * geometry.outWidth
        precondition(outputGradient.shape == [batch, layer.outChannels, geometry.outHeight, geometry.outWidth],
                     "output gradient \(outputGradient.shape) for this convolution")
        let depth = geometry.depth
        let result = Tensor(zeros: [batch, layer.inChannels, inputHeight, inputWidth])
        countProduct(batch * depth, pixels, layer.outChannels)
        pool.parallelFor(batch) { image, worker in
            let columns = scratch(worker: worker, count: depth * pixels)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(depth), Int32(pixels), Int32(layer.outChannels), 1,
                        layer.weight.data, Int32(depth), outputGradient.data + image * outputGradient.sliceCount,
                        Int32(pixels), 0, columns, Int32(pixels))
            geometry.col2im(columns, into: result.data + image * result.sliceCount)
        }
        return result
    }
}

extension ConvGeometry {
    /// Adds each unfolded column entry back onto the input pixel it was read from
    /// (the transpose of `im2col` over all output pixels).
    func col2im(_ columns: UnsafePointer<Float>, into destination: UnsafeMutablePointer<Float>) {
        var row = columns
        for channel in 0..<inChannels {
            let plane = destination + channel * inHeight * inWidth
            for ky in 0..<kernelHeight {
                for kx in 0..<kernelWidth {
                    for oy in 0..<outHeight {
                        let iy = oy * stride + ky - padding.top
                        guard iy >= 0 && iy < inHeight else { continue }
                        for ox in 0..<outWidth {
                            let ix = ox * stride + kx - padding.left
                            if ix >= 0 && ix < inWidth { plane[iy * inWidth + ix] += row[oy * outWidth + ox] }
                        }
                    }
                    row += outHeight * outWidth
                }
            }
        }
    }
}

/// Copies `count` floats; inline vector moves rather than a library call, since
/// im2col's rows are short (an output row of 7 to 64 pixels) and numerous.
@inline(__always)
private func copy(_ source: UnsafePointer<Float>, _ destination: UnsafeMutablePointer<Float>, _ count: Int) {
    var i = 0
    while i &+ 8 <= count {
        UnsafeMutableRawPointer(destination + i).storeBytes(
            of: UnsafeRawPointer(source + i).loadUnaligned(as: SIMD8<Float>.self), as: SIMD8<Float>.self)
        i &+= 8
    }
    while i < count {
        destination[i] = source[i]
        i &+= 1
    }
}

/// Writes `count` zeros (usually one or two: the padding at a row's edge).
@inline(__always)
private func fill(_ destination: UnsafeMutablePointer<Float>, _ count: Int) {
    var i = 0
    while i < count {
        destination[i] = 0
        i &+= 1
    }
}
