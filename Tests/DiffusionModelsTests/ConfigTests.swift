import DiffusionKernels
import DiffusionModels
import Foundation
import Testing

@Suite struct ConfigTests {
    /// A config.json of the base keys with `changes` (JSON values by key) applied.
    func parse(_ changes: [String: String]) throws -> UNet2DConfig {
        var keys: [String: Any] = [
            "_class_name": "UNet2DModel", "block_out_channels": [32, 64], "norm_num_groups": 8,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "act_fn": "silu", "resnet_time_scale_shift": "default", "add_attention": true, "attention_head_dim": NSNull(),
        ]
        for (key, json) in changes {
            keys[key] = try JSONSerialization.jsonObject(with: Data(json.utf8), options: .fragmentsAllowed)
        }
        return try UNet2DConfig(json: JSONSerialization.data(withJSONObject: keys), source: "config.json")
    }

    @Test func acceptsDiffusersDefaults() throws {
        let config = try parse(["downsample_type": #""conv""#, "upsample_type": #""conv""#, "dropout": "0.1",
                                "class_embed_type": "null", "mid_block_type": #""UNetMidBlock2D""#, "sample_size": "[8, 16]"])
        #expect(config.attentionHeadDim == nil)
        #expect(config.sampleSize == [8, 16])
        #expect(config.timeEmbedDim == 128)
    }

    @Test(arguments: [
        ("act_fn", #""gelu""#, #"act_fn = "gelu" is not supported"#),
        ("resnet_time_scale_shift", #""spatial""#, #"resnet_time_scale_shift = "spatial" is not supported"#),
        ("time_embedding_type", #""learned""#, #"time_embedding_type = "learned" is not supported"#),
        ("down_block_types", #"["DownBlock2D", "CrossAttnDownBlock2D"]"#, #"down_block_types = "CrossAttnDownBlock2D""#),
        ("class_embed_type", #""identity""#, #"class_embed_type "identity" is not supported"#),
        ("mid_block_type", #""UNetMidBlock2DCrossAttn""#, #"mid_block_type = "UNetMidBlock2DCrossAttn""#),
        ("downsample_type", #""resnet""#, #"downsample_type = "resnet""#),
        ("cross_attention_dim", "768", "unknown key cross_attention_dim = 768"),
        ("norm_num_groups", "7", "not divisible by norm_num_groups 7"),
        ("layers_per_block", #""two""#, "layers_per_block must be an integer"),
        ("add_attention", "1", "add_attention must be true or false"),
    ])
    func rejectsWhatItCannotRun(key: String, value: String, message: String) {
        #expect {
            _ = try parse([key: value])
        } throws: { error in
            String(describing: error).hasPrefix("config.json: ") && String(describing: error).contains(message)
        }
    }

    @Test func weightsMustMatchTheConfig() throws {
        let fixtures = Bundle.module.resourceURL!.appendingPathComponent("Fixtures").path
        let weights = try SafeTensorsFile(path: "\(fixtures)/flat-legacy-attention/diffusion_pytorch_model.safetensors")
        var config = try ModelDirectory(path: "\(fixtures)/flat-legacy-attention").loadUNetConfig()
        config.layersPerBlock = 1
        #expect {
            _ = try UNet2DModel(config: config, weights: weights)
        } throws: { error in
            String(describing: error).contains("has shape") || String(describing: error).contains("does not describe")
        }
        config.layersPerBlock = 3
        #expect {
            _ = try UNet2DModel(config: config, weights: weights)
        } throws: { error in
            String(describing: error).contains("is missing")
        }
    }

    @Test func forwardRejectsWrongInputs() throws {
        let model = try UNet2DModel(config: parse(["num_class_embeds": "3", "in_channels": "1", "out_channels": "1"]),
                                    weights: RandomWeights(seed: 1))
        let k = KernelRuntime(threadCount: 1)
        let x = Tensor(zeros: [1, 1, 8, 8])
        #expect(throws: DiffusionError("this model is class-conditional: give a class label per image")) {
            try model.forward(x, timesteps: [1], on: k)
        }
        #expect(throws: DiffusionError("class label 3 outside 0..<3")) { try model.forward(x, timesteps: [1], classLabels: [3], on: k) }
        #expect(throws: DiffusionError("image size 7x8 must be a multiple of 2 for this model")) {
            try model.forward(Tensor(zeros: [1, 1, 7, 8]), timesteps: [1], classLabels: [0], on: k)
        }
        #expect(try model.forward(x, timesteps: [1], classLabels: [2], on: k).shape == [1, 1, 8, 8])
    }
}
