import Foundation

extension KernelRuntime {
    /// Sinusoidal timestep embedding `[batch, dimension]`, as diffusers' `get_timestep_embedding`:
    /// frequency `i` is `exp(-ln(maxPeriod) · i / (half - freqShift))`, the first half
    /// holds sines and the second cosines, swapped when `flipSinToCos`, and an odd
    /// dimension ends in a zero. Computed in double, then rounded once.
    public func timestepEmbedding(
        _ timesteps: [Float], dimension: Int, flipSinToCos: Bool, freqShift: Float, maxPeriod: Double = 10_000
    ) -> Tensor {
        let half = dimension / 2
        let output = Tensor(zeros: [timesteps.count, dimension])
        for (row, t) in timesteps.enumerated() {
            let line = output.data + row * dimension
            for i in 0..<half {
                let frequency = Foundation.exp(-Foundation.log(maxPeriod) * Double(i) / (Double(half) - Double(freqShift)))
                let angle = Double(t) * frequency
                let (first, second) = flipSinToCos ? (cos(angle), sin(angle)) : (sin(angle), cos(angle))
                line[i] = Float(first)
                line[half + i] = Float(second)
            }
        }
        return output
    }

    /// diffusers' `GaussianFourierProjection` (log = true, sin first): for each
    /// time σ, [sin(2π·w·log σ), cos(2π·w·log σ)] over the `weight` frequencies `[d]`.
    public func fourierEmbedding(_ times: [Float], weight: Tensor) -> Tensor {
        let half = weight.count
        let output = Tensor(zeros: [times.count, 2 * half])
        for (row, t) in times.enumerated() {
            let line = output.data + row * 2 * half
            let logTime = Foundation.log(Double(t))
            for i in 0..<half {
                let angle = logTime * Double(weight.data[i]) * 2 * Double.pi
                line[i] = Float(sin(angle))
                line[half + i] = Float(cos(angle))
            }
        }
        return output
    }

    /// Rows `indices` of `table` `[count, dimension]` (an `nn.Embedding`).
    public func embeddingLookup(_ table: Tensor, indices: [Int]) -> Tensor {
        let (count, dimension) = (table.shape[0], table.shape[1])
        let output = Tensor(uninitialized: [indices.count, dimension])
        for (row, index) in indices.enumerated() {
            precondition((0..<count).contains(index), "embedding index \(index) outside 0..<\(count)")
            (output.data + row * dimension).update(from: table.data + index * dimension, count: dimension)
        }
        return output
    }
}
