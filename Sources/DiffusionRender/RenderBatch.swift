import DiffusionKernels
import Foundation

/// Several renders of one model stepped together: their model passes go through
/// the model as one batch, each at its own timestep, and each render then
/// finishes its own step. The kernel runtime never lets an image's result
/// depend on its batch-mates, so every image is what it would be alone.
public enum RenderBatch {
    /// One step of every render in `renders` (all of one model, none finished).
    /// A failure of the model throws; a render's own failure (its guidance or
    /// sampler) is its entry in the result, and the others still step.
    public static func step(_ renders: [Render], on runtime: KernelRuntime) throws -> [Error?] {
        let passes = renders.map { $0.nextModelPass() }
        let start = DispatchTime.now().uptimeNanoseconds
        let conditional = passes[0].labels != nil
        let output = try renders[0].model.denoiser.predict(
            passes.count == 1 ? passes[0].input : Tensor.stacking(passes.map(\.input)),
            timesteps: passes.flatMap(\.timesteps), alphasCumprod: passes.flatMap(\.alphasCumprod),
            classLabels: conditional ? passes.flatMap { $0.labels ?? [] } : nil, on: runtime)
        let modelTime = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let images = passes.reduce(0) { $0 + $1.input.shape[0] }
        var offset = 0
        return zip(renders, passes).map { render, pass in
            let size = pass.input.shape[0]
            defer { offset += size }
            do {
                try render.finishStep(modelOutput: passes.count == 1 ? output : output.slice(offset..<(offset + size)),
                                      modelSeconds: modelTime * Double(size) / Double(images))
                return nil
            } catch {
                return error
            }
        }
    }
}
