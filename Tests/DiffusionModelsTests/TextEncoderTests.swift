import DiffusionKernels
import DiffusionModels
import Foundation
import Testing

/// CLIPTextModel's last_hidden_state against transformers' in float64, for the
/// SD 1.x form (quick_gelu, float32) and the SD 2.x form (gelu, fp16 variant files).
@Suite struct TextEncoderTests {
    @Test(arguments: ["sd1-tiny", "sd2-tiny"])
    func statesMatchTransformers(_ model: String) throws {
        let root = "\(LatentFixtures.root)/\(model)"
        let tokenizer = try CLIPTokenizer(directory: "\(root)/tokenizer")
        let encoder = try CLIPTextModel(directory: "\(root)/text_encoder")
        let prompts = try LatentFixtures.cases(model)["text"]!.prompts!
        let states = try encoder.encode(prompts.map(tokenizer.encode), on: KernelRuntime(threadCount: 2))
        let (error, info) = try LatentFixtures.error(model, "text", states.swappingLastAxes(encoder.config.hiddenSize))
        #expect(error <= info.tolerance)
    }

    @Test func refusesAnActivationItDoesNotImplement() {
        let json = Data(#"{"hidden_act": "relu", "hidden_size": 8, "num_attention_heads": 2}"#.utf8)
        #expect(throws: DiffusionError("config.json: hidden_act = \"relu\" is not supported by this runtime")) {
            try CLIPTextConfig(json: json, source: "config.json")
        }
    }
}
