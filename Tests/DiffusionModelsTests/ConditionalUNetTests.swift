import DiffusionKernels
import DiffusionModels
import Foundation
import Testing

/// UNet2DConditionModel against diffusers in float64: SD 1.x's form (conv
/// projections, one head count) and SD 2.x's (linear projections, heads per
/// level, upcast attention, fp16 variant files), with random text states.
@Suite struct ConditionalUNetTests {
    @Test(arguments: ["sd1-tiny", "sd2-tiny"])
    func outputMatchesDiffusers(_ model: String) throws {
        let unet = try UNet2DConditionModel(directory: "\(LatentFixtures.root)/\(model)/unet")
        let states = try LatentFixtures.array(model, "unet-states")
        let timesteps = try LatentFixtures.cases(model)["unet"]!.timesteps!
        let output = try unet.forward(try LatentFixtures.array(model, "unet-input"), timesteps: timesteps,
                                      context: states.swappingLastAxes(77).reshaped([2, unet.config.crossAttentionDim, 77, 1]),
                                      on: KernelRuntime(threadCount: 2))
        let (error, info) = try LatentFixtures.error(model, "unet", output)
        #expect(error <= info.tolerance)
    }

    @Test func refusesSDXLAdditionEmbeddings() throws {
        let json = Data(#"{"_class_name": "UNet2DConditionModel", "addition_embed_type": "text_time", "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}"#.utf8)
        #expect(throws: DiffusionError("unet/config.json: addition_embed_type = \"text_time\" is not supported (a Stable Diffusion 1.x/2.x U-Net has it null)")) {
            try UNet2DConditionConfig(json: json, source: "unet/config.json")
        }
    }
}
