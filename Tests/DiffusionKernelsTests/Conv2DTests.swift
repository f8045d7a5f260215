import DiffusionKernels
import Testing

@Suite struct Conv2DTests {
    let runtime = KernelRuntime(threadCount: 2)

    static let shapes: [(kernel: Int, stride: Int, padding: Padding, upsample: Bool, size: Int, channels: Int)] = [
        (3, 1, .uniform(1), false, 9, 5),
        (3, 2, .uniform(1), false, 10, 5),
        (3, 2, Padding(top: 0, left: 0, bottom: 1, right: 1), false, 8, 5),
        (1, 1, .uniform(0), false, 12, 5),
        (3, 1, .uniform(1), true, 6, 5),
        (3, 1, .uniform(1), false, 24, 5),
        // Large enough for Winograd: plain, odd-sized, and with the fused upsample.
        (3, 1, .uniform(1), false, 16, 64),
        (3, 1, .uniform(1), false, 17, 64),
        (3, 1, .uniform(1), true, 9, 64),
    ]

    @Test(arguments: shapes.indices)
    func matchesDirectConvolution(_ index: Int) {
        let s = Self.shapes[index]
        let input = Reference.random([2, s.channels, s.size, s.size], seed: 1)
        let layer = Conv2DLayer(weight: Reference.random([s.channels + 2, s.channels, s.kernel, s.kernel], seed: 2, scale: 0.2),
                                bias: Reference.random([s.channels + 2], seed: 3), stride: s.stride, padding: s.padding)
        let output = runtime.conv2d(input, layer, upsampleInput: s.upsample)
        #expect(Reference.maxError(output, Reference.conv2d(input, layer, upsample: s.upsample)) < 1e-4)
    }

    @Test func epilogueAddsChannelBiasResidualAndScale() {
        // 64 channels at 16x16: the Winograd path's epilogue.
        let input = Reference.random([2, 64, 16, 16], seed: 4)
        let layer = Conv2DLayer(weight: Reference.random([64, 64, 3, 3], seed: 5, scale: 0.1), bias: Reference.random([64], seed: 6),
                                padding: .uniform(1))
        let channelBias = Reference.random([2, 64], seed: 7)
        let residual = Reference.random([2, 64, 16, 16], seed: 8)
        let output = runtime.conv2d(input, layer, epilogue: ConvEpilogue(channelBias: channelBias, residual: residual,
                                                                         outputScale: 1.5))
        var expected = Reference.conv2d(input, layer)
        for i in expected.indices {
            expected[i] = (Double(residual.data[i]) + expected[i] + Double(channelBias.data[i / 256])) / 1.5
        }
        #expect(Reference.maxError(output, expected) < 1e-4)
    }

    @Test func bitsDoNotDependOnThreadsOrBatch() {
        let batch = Reference.random([5, 64, 32, 32], seed: 9)
        let layer = Conv2DLayer(weight: Reference.random([128, 64, 3, 3], seed: 10, scale: 0.05), bias: nil,
                                padding: .uniform(1))
        let alone = KernelRuntime(threadCount: 1).conv2d(batch.slice(3..<4), layer)
        for threads in [1, 2, 3] {
            let together = KernelRuntime(threadCount: threads).conv2d(batch, layer)
            #expect(together.slice(3..<4).isBitIdentical(to: alone), "threads \(threads)")
        }
    }
}
