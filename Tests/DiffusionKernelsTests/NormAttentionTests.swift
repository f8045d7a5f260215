import DiffusionKernels
import Foundation
import Testing

@Suite struct NormAttentionTests {
    let runtime = KernelRuntime(threadCount: 2)

    @Test(arguments: [false, true])
    func groupNormMatchesFloat64(silu: Bool) {
        // An offset of 100 makes a one-pass float variance lose most of its digits.
        let input = runtime.affine(Reference.random([2, 8, 5, 7], seed: 11), scale: 3, shift: 100)
        let layer = GroupNormLayer(groups: 4, epsilon: 1e-6, weight: Reference.random([8], seed: 12),
                                   bias: Reference.random([8], seed: 13))
        let output = runtime.groupNorm(input, layer, silu: silu)
        #expect(Reference.maxError(output, Reference.groupNorm(input, layer, silu: silu)) < 2e-6)
    }

    @Test(arguments: [1, 4])
    func attentionMatchesFloat64(heads: Int) {
        let (batch, channels, h, w) = (2, 8, 5, 6)
        let pixels = h * w
        let input = Reference.random([batch, channels, h, w], seed: 14)
        let norm = GroupNormLayer(groups: 2, epsilon: 1e-5, weight: Reference.random([channels], seed: 15),
                                  bias: Reference.random([channels], seed: 16))
        let qkv = Conv2DLayer(weight: Reference.random([3 * channels, channels, 1, 1], seed: 17, scale: 0.5),
                              bias: Reference.random([3 * channels], seed: 18), padding: .uniform(0))
        let proj = Conv2DLayer(weight: Reference.random([channels, channels, 1, 1], seed: 19, scale: 0.5),
                               bias: Reference.random([channels], seed: 20), padding: .uniform(0))
        let layer = AttentionLayer(norm: norm, queryKeyValue: qkv, output: proj, heads: heads, rescaleOutputFactor: 2)
        let output = runtime.attention(input, layer)

        // softmax(q kᵀ/√d) v per head, in float64, from the same normalized input.
        let normalized = Tensor(shape: input.shape, scalars: Reference.groupNorm(input, norm, silu: false).map(Float.init))
        let projected = Reference.conv2d(normalized, qkv)
        let d = channels / heads
        var mixed = [Double](repeating: 0, count: input.count)
        for b in 0..<batch { for head in 0..<heads {
            func value(_ part: Int, _ c: Int, _ p: Int) -> Double {
                projected[((b * 3 * channels) + part * channels + head * d + c) * pixels + p]
            }
            for i in 0..<pixels {
                let scores = (0..<pixels).map { j in (0..<d).map { value(0, $0, i) * value(1, $0, j) }.reduce(0, +) / sqrt(Double(d)) }
                let peak = scores.max()!
                let weights = scores.map { exp($0 - peak) }
                let total = weights.reduce(0, +)
                for c in 0..<d {
                    mixed[(b * channels + head * d + c) * pixels + i] =
                        (0..<pixels).map { weights[$0] * value(2, c, $0) }.reduce(0, +) / total
                }
            }
        } }
        let mixedTensor = Tensor(shape: input.shape, scalars: mixed.map(Float.init))
        let expected = zip(Reference.conv2d(mixedTensor, proj), input.scalars).map { ($0 + Double($1)) / 2 }
        #expect(Reference.maxError(output, expected) < 1e-5)
    }

    @Test func timestepEmbeddingFollowsDiffusersFormula() {
        // dimension 6, half 3, freqShift 1: frequencies exp(-ln(1e4)·i/2) = 1, 1e-2, 1e-4.
        let plain = runtime.timestepEmbedding([3], dimension: 6, flipSinToCos: false, freqShift: 1)
        let frequencies = [1.0, 1e-2, 1e-4]
        let expected = frequencies.map { sin(3 * $0) } + frequencies.map { cos(3 * $0) }
        #expect(Reference.maxError(plain, expected) < 1e-7)
        let flipped = runtime.timestepEmbedding([3], dimension: 7, flipSinToCos: true, freqShift: 1)
        #expect(Reference.maxError(flipped, frequencies.map { cos(3 * $0) } + frequencies.map { sin(3 * $0) } + [0]) < 1e-7)
        // freqShift 0 divides by half: exp(-ln(1e4)·i/3).
        let unshifted = runtime.timestepEmbedding([999], dimension: 6, flipSinToCos: true, freqShift: 0)
        let f0 = (0..<3).map { exp(-log(10_000.0) * Double($0) / 3) }
        #expect(Reference.maxError(unshifted, f0.map { cos(999 * $0) } + f0.map { sin(999 * $0) }) < 1e-6)
    }

    @Test func siluAndLinear() {
        let x = Reference.random([3, 40], seed: 21, scale: 4)
        let activated = runtime.silu(x)
        #expect(Reference.maxError(activated, x.scalars.map { Double($0) / (1 + exp(-Double($0))) }) < 1e-6)
        let layer = LinearLayer(weight: Reference.random([5, 40], seed: 22), bias: Reference.random([5], seed: 23))
        let y = runtime.linear(x, layer, siluInput: true)
        var expected: [Double] = []
        for row in 0..<3 { for o in 0..<5 {
            expected.append(Double(layer.bias!.data[o]) + (0..<40).map {
                Double(layer.weight.data[o * 40 + $0]) * Double(activated.data[row * 40 + $0])
            }.reduce(0, +))
        } }
        #expect(Reference.maxError(y, expected) < 1e-4)
    }

    @Test func concatenationAndEmbeddingLookup() {
        let a = Reference.random([2, 3, 2, 2], seed: 24), b = Reference.random([2, 1, 2, 2], seed: 25)
        let joined = runtime.concatenateChannels([a, b])
        #expect(joined.shape == [2, 4, 2, 2])
        #expect(Array(joined.scalars[12..<16]) == b.scalars[0..<4].map { $0 })
        #expect(Array(joined.scalars[16..<28]) == Array(a.scalars[12..<24]))
        let table = Reference.random([4, 3], seed: 26)
        #expect(runtime.embeddingLookup(table, indices: [2, 0]).scalars == Array(table.scalars[6..<9] + table.scalars[0..<3]))
    }
}
