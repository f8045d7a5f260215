import DiffusionKernels
import DiffusionModels
import Foundation
import Testing

/// AutoencoderKL (SD 1.x float32 with quant convs; SD 2.x fp16 variant without)
/// and VQModel (bfloat16, LDM's layout) against diffusers in float64: the
/// encoder's moments or latents, and the decoder's image.
@Suite struct AutoencoderTests {
    static let models = [("sd1-tiny", "vae"), ("sd2-tiny", "vae"), ("ldm-tiny", "vqvae")]

    @Test(arguments: models)
    func encoderMatchesDiffusers(_ model: String, _ component: String) throws {
        let autoencoder = try Autoencoder(directory: "\(LatentFixtures.root)/\(model)/\(component)")
        let output = try autoencoder.encode(try LatentFixtures.array(model, "encoder-input"), on: KernelRuntime(threadCount: 2))
        let (error, info) = try LatentFixtures.error(model, "encoder", output)
        #expect(error <= info.tolerance)
    }

    @Test(arguments: models)
    func decoderMatchesDiffusers(_ model: String, _ component: String) throws {
        let autoencoder = try Autoencoder(directory: "\(LatentFixtures.root)/\(model)/\(component)")
        let output = try autoencoder.decode(try LatentFixtures.array(model, "decoder-input"), on: KernelRuntime(threadCount: 2))
        let (error, info) = try LatentFixtures.error(model, "decoder", output)
        #expect(error <= info.tolerance)
    }
}
