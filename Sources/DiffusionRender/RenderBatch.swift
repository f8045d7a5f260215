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
        let start = DispatchTime.now().uptimeNanoseconds
        let passes = renders.map { $0.nextModelPass() }
        let input = passes.count == 1 ? passes[0].input : Tensor.stacking(passes.map(\.input))
        let modelStart = DispatchTime.now().uptimeNanoseconds
        let output = try renders[0].model.denoiser.predict(
            input, timesteps: passes.flatMap(\.timesteps), alphasCumprod: passes.flatMap(\.alphasCumprod),
            classLabels: passes[0].labels != nil ? passes.flatMap { $0.labels ?? [] } : nil,
            context: passes[0].context != nil ? Tensor.stacking(passes.compactMap(\.context)) : nil, on: runtime)
        let modelTime = Double(DispatchTime.now().uptimeNanoseconds - modelStart) / 1e9
        let preparation = Double(modelStart - start) / 1e9
        let images = Double(input.shape[0])
        var offset = 0
        return zip(renders, passes).map { render, pass in
            let size = pass.input.shape[0]
            defer { offset += size }
            do {
                let share = Double(size) / images
                try render.finishStep(modelOutput: passes.count == 1 ? output : output.slice(offset..<(offset + size)),
                                      modelSeconds: modelTime * share, preparationSeconds: preparation * share)
                return nil
            } catch {
                return error
            }
        }
    }
}
