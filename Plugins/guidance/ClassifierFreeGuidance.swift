/// `cfg`: classifier-free guidance (Ho & Salimans, 2021, eq. 6):
/// ε̃ = ε(x_t, ∅) + s·(ε(x_t, y) − ε(x_t, ∅)).
///
/// Options: `scale` s (default 1, which is the plain conditional model; 0 is the
/// unconditional one). As in diffusers' pipelines it combines the model outputs
/// in whatever space the model predicts (ε, v or x₀).
import DiffusionPluginKit

final class ClassifierFreeGuidance: GuidanceInstance {
    let scale: Float

    init(_ options: PluginOptions) throws {
        scale = Float(try options.number("scale", default: 1, in: guidanceScales))
    }

    var needs: UInt32 { needsConditional | needsUnconditional }

    func combine(_ inputs: dfn_guidance_inputs, into guided: UnsafeMutablePointer<Float>) throws {
        let count = Int(inputs.images) * Int(inputs.image_size)
        let (conditional, unconditional) = (inputs.conditional!, inputs.unconditional!)
        for i in 0..<count { guided[i] = unconditional[i] + scale * (conditional[i] - unconditional[i]) }
    }
}
