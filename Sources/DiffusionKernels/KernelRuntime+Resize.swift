import Foundation

/// How an image is resampled to another size: PyTorch's `F.interpolate` modes
/// with `align_corners=False`, the resampling super-resolution pipelines use on
/// their conditioning image.
public enum Resampling: String, Sendable, CaseIterable {
    case nearest, bilinear, bicubic
}

extension KernelRuntime {
    /// `x` `[n, c, h, w]` resampled to `[n, c, height, width]` exactly as
    /// `F.interpolate(x, size=(height, width), mode=mode, align_corners=False)`:
    /// source coordinates (dst + ½)·in/out − ½ (nearest: ⌊dst·in/out⌋), bilinear
    /// clamping negative coordinates to 0, bicubic Keys' kernel with a = −0.75 and
    /// edge pixels repeated. Weights in double, each output rounded once.
    public func resize(_ x: Tensor, height: Int, width: Int, mode: Resampling) -> Tensor {
        let (planes, inHeight, inWidth) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3])
        let rows = Self.resamplingTaps(from: inHeight, to: height, mode: mode)
        let columns = Self.resamplingTaps(from: inWidth, to: width, mode: mode)
        let output = Tensor(uninitialized: [x.shape[0], x.shape[1], height, width])
        for plane in 0..<planes {
            let source = x.data + plane * inHeight * inWidth
            let target = output.data + plane * height * width
            for y in 0..<height {
                for x in 0..<width {
                    var sum = 0.0
                    for (row, rowWeight) in rows[y] {
                        for (column, columnWeight) in columns[x] {
                            sum += rowWeight * columnWeight * Double(source[row * inWidth + column])
                        }
                    }
                    target[y * width + x] = Float(sum)
                }
            }
        }
        return output
    }

    /// Each output index's source indices and weights along one axis.
    static func resamplingTaps(from size: Int, to outSize: Int, mode: Resampling) -> [[(Int, Double)]] {
        let scale = Double(size) / Double(outSize)
        let clamp = { (index: Int) in min(max(index, 0), size - 1) }
        return (0..<outSize).map { out in
            switch mode {
            case .nearest:
                return [(min(Int((Double(out) * scale).rounded(.down)), size - 1), 1)]
            case .bilinear:
                let real = max(scale * (Double(out) + 0.5) - 0.5, 0)
                let low = Int(real.rounded(.down))
                let fraction = real - Double(low)
                return [(clamp(low), 1 - fraction), (clamp(low + 1), fraction)]
            case .bicubic:
                let real = scale * (Double(out) + 0.5) - 0.5
                let low = Int(real.rounded(.down))
                let t = real - Double(low)
                let a = -0.75
                // Keys' cubic convolution: |d| ≤ 1 and 1 < |d| < 2
                let near = { (d: Double) in ((a + 2) * d - (a + 3)) * d * d + 1 }
                let far = { (d: Double) in ((a * d - 5 * a) * d + 8 * a) * d - 4 * a }
                return [(clamp(low - 1), far(t + 1)), (clamp(low), near(t)), (clamp(low + 1), near(1 - t)),
                        (clamp(low + 2), far(2 - t))]
            }
        }
    }
}
