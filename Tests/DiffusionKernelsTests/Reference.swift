import DiffusionKernels
import Foundation

/// Naive float64 versions of the ops, the yardstick for the fast kernels.
enum Reference {
    static func random(_ shape: [Int], seed: UInt64, scale: Float = 1) -> Tensor {
        var generator = Philox(seed: seed)
        let t = Tensor(uninitialized: shape)
        for i in 0..<t.count { t.data[i] = scale * generator.nextNormal() }
        return t
    }

    static func conv2d(_ x: Tensor, _ layer: Conv2DLayer, upsample: Bool = false) -> [Double] {
        let (batch, cin) = (x.shape[0], x.shape[1])
        let (h, w) = upsample ? (2 * x.shape[2], 2 * x.shape[3]) : (x.shape[2], x.shape[3])
        let (kh, kw, s, p) = (layer.kernelHeight, layer.kernelWidth, layer.stride, layer.padding)
        let oh = (h + p.top + p.bottom - kh) / s + 1, ow = (w + p.left + p.right - kw) / s + 1
        var out = [Double](repeating: 0, count: batch * layer.outChannels * oh * ow)
        func pixel(_ b: Int, _ c: Int, _ y: Int, _ xx: Int) -> Double {
            guard y >= 0, y < h, xx >= 0, xx < w else { return 0 }
            let (sy, sx) = upsample ? (y / 2, xx / 2) : (y, xx)
            return Double(x.data[((b * cin + c) * x.shape[2] + sy) * x.shape[3] + sx])
        }
        for b in 0..<batch { for o in 0..<layer.outChannels { for y in 0..<oh { for xx in 0..<ow {
            var acc = Double(layer.bias?.data[o] ?? 0)
            for c in 0..<cin { for ky in 0..<kh { for kx in 0..<kw {
                acc += Double(layer.weight.data[((o * cin + c) * kh + ky) * kw + kx])
                    * pixel(b, c, y * s + ky - p.top, xx * s + kx - p.left)
            } } }
            out[((b * layer.outChannels + o) * oh + y) * ow + xx] = acc
        } } } }
        return out
    }

    static func groupNorm(_ x: Tensor, _ layer: GroupNormLayer, silu: Bool) -> [Double] {
        let (batch, channels) = (x.shape[0], x.shape[1])
        let plane = x.count / (batch * channels)
        let perGroup = channels / layer.groups * plane
        var out = [Double](repeating: 0, count: x.count)
        for b in 0..<batch { for g in 0..<layer.groups {
            let start = (b * layer.groups + g) * perGroup
            let values = (0..<perGroup).map { Double(x.data[start + $0]) }
            let mean = values.reduce(0, +) / Double(perGroup)
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(perGroup)
            for i in 0..<perGroup {
                let c = (start + i) / plane % channels
                var y = (values[i] - mean) / (variance + Double(layer.epsilon)).squareRoot()
                y = y * Double(layer.weight.data[c]) + Double(layer.bias.data[c])
                out[start + i] = silu ? y / (1 + exp(-y)) : y
            }
        } }
        return out
    }

    static func maxError(_ t: Tensor, _ reference: [Double]) -> Double {
        precondition(t.count == reference.count)
        return (0..<t.count).map { abs(Double(t.data[$0]) - reference[$0]) }.max() ?? 0
    }
}

