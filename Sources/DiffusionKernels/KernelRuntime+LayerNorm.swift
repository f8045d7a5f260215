extension KernelRuntime {
    /// Layer normalization over the channels of every token of a channel-major
    /// `input` `[batch, channels, tokens...]` (PyTorch's `nn.LayerNorm(channels)` on
    /// the token-major view). A task is (image, block of 64 tokens); the statistics
    /// accumulate in double across channels, two-pass, each token's on its own lane.
    public func layerNorm(_ input: Tensor, _ layer: LayerNormLayer) -> Tensor {
        precondition(input.shape.count >= 2 && input.shape[1] == layer.channels,
                     "layer norm of \(layer.channels) channels applied to \(input.shape)")
        let (batch, channels) = (input.shape[0], layer.channels)
        let tokens = input.sliceCount / channels
        let block = 64
        let blocks = (tokens + block - 1) / block
        let output = Tensor(uninitialized: input.shape)
        pool.parallelFor(batch * blocks) { task, _ in
            let first = (task % blocks) * block
            let count = min(block, tokens - first)
            let source = input.data + (task / blocks) * input.sliceCount + first
            let destination = output.data + (task / blocks) * input.sliceCount + first
            withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * block) { statistics in
                let (mean, inverseDeviation) = (statistics.baseAddress!, statistics.baseAddress! + block)
                mean.initialize(repeating: 0, count: count)
                inverseDeviation.initialize(repeating: 0, count: count)
                for c in 0..<channels {
                    let row = source + c * tokens
                    for t in 0..<count { mean[t] += Double(row[t]) }
                }
                for t in 0..<count { mean[t] /= Double(channels) }
                for c in 0..<channels {
                    let row = source + c * tokens
                    for t in 0..<count {
                        let centered = Double(row[t]) - mean[t]
                        inverseDeviation[t] += centered * centered
                    }
                }
                for t in 0..<count {
                    inverseDeviation[t] = 1 / (inverseDeviation[t] / Double(channels) + Double(layer.epsilon)).squareRoot()
                }
                for c in 0..<channels {
                    let (row, out) = (source + c * tokens, destination + c * tokens)
                    let (gain, shift) = (layer.weight.data[c], layer.bias.data[c])
                    for t in 0..<count {
                        out[t] = shift.addingProduct(Float((Double(row[t]) - mean[t]) * inverseDeviation[t]), gain)
                    }
                }
            }
        }
        return output
    }
}
