import DiffusionKernels
import DiffusionModels
import Foundation
import Testing

/// An image's output bits must not depend on the thread count or on its batch-mates:
/// the daemon batches unrelated jobs together and resumes interrupted ones.
@Suite struct DeterminismTests {
    /// The google/ddpm-cifar10-32 layout at half width and 16x16, plus class conditioning,
    /// so GEMM shapes stay realistic while the test stays quick.
    static func model() throws -> UNet2DModel {
        var config = UNet2DConfig()
        config.sampleSize = [16, 16]
        config.blockOutChannels = [64, 128, 128, 128]
        config.downBlockTypes = [.plain, .attention, .plain, .plain]
        config.upBlockTypes = [.plain, .plain, .attention, .plain]
        config.attentionHeadDim = 32
        config.numClassEmbeds = 10
        return try UNet2DModel(config: config, weights: RandomWeights(seed: 7))
    }

    @Test func bitsIndependentOfBatchAndThreads() throws {
        let model = try Self.model()
        var generator = Philox(seed: 3)
        let images = Tensor(uninitialized: [8, 3, 16, 16])
        generator.fillNormal(images.data, count: images.count)
        let timesteps: [Float] = [999, 0, 500, 250, 17, 731, 402, 88]
        let labels = [0, 1, 2, 3, 4, 5, 6, 7]

        let single = KernelRuntime(threadCount: 1)
        let alone = try (0..<8).map {
            try model.forward(images.slice($0..<($0 + 1)), timesteps: [timesteps[$0]], classLabels: [labels[$0]], on: single)
        }
        for threads in [1, 2] {
            let runtime = KernelRuntime(threadCount: threads)
            for batch in [1, 2, 3, 8] {
                let first = 8 - batch
                let out = try model.forward(images.slice(first..<8), timesteps: Array(timesteps[first...]),
                                            classLabels: Array(labels[first...]), on: runtime)
                for i in 0..<batch {
                    #expect(out.slice(i..<(i + 1)).isBitIdentical(to: alone[first + i]),
                            "image \(first + i) in a batch of \(batch) on \(threads) threads")
                }
            }
        }
    }
}
