/// `classifier`: classifier guidance (Dhariwal & Nichol, 2021, Algorithm 2), in ε space:
/// ε̃ = ε(x_t) − s·√(1−ᾱ_t)·∇ₓ log p_φ(y | x_t).
///
/// Options: `scale` s (default 1) and `conditional` (default false). By default
/// the gradient is added to the unconditional prediction (the null label), so
/// that at scale 1 the sampler draws from p(x | y); with `conditional` it is
/// added to the conditional one, as guided-diffusion does with its class-
/// conditional models. The gradient comes from the model's noisy classifier
/// through `host->classifier_gradient`. Limitation: the model must predict ε.
import DiffusionPluginKit

final class ClassifierGuidance: GuidanceInstance {
    let host: UnsafePointer<dfn_host>
    let scale: Double
    let conditional: Bool
    var gradient: [Float] = []

    init(host: UnsafePointer<dfn_host>, _ options: PluginOptions) throws {
        self.host = host
        scale = try options.number("scale", default: 1, in: guidanceScales)
        conditional = try options.bool("conditional", default: false)
    }

    var needs: UInt32 { (conditional ? needsConditional : needsUnconditional) | needsClassifier }

    func combine(_ inputs: dfn_guidance_inputs, into guided: UnsafeMutablePointer<Float>) throws {
        guard let classifier = inputs.classifier else { throw PluginError("this model has no classifier for classifier guidance") }
        let count = Int(inputs.images) * Int(inputs.image_size)
        if gradient.count < count { gradient = [Float](repeating: 0, count: count) }
        var error = [CChar](repeating: 0, count: 256)
        let status = gradient.withUnsafeMutableBufferPointer { buffer in
            host.pointee.classifier_gradient(classifier, inputs.images, inputs.image_size, inputs.sample, inputs.timestep,
                                             inputs.labels, buffer.baseAddress, &error, error.count)
        }
        guard status == pluginOK else { throw PluginError(String(decoding: error.prefix { $0 != 0 }.map(UInt8.init), as: UTF8.self)) }
        let source = conditional ? inputs.conditional! : inputs.unconditional!
        let step = Float(scale * (1 - inputs.alpha_cumprod).squareRoot())
        for i in 0..<count { guided[i] = source[i] - step * gradient[i] }
    }
}
