extension KernelRuntime {
    /// Group normalization of `input` `[batch, channels, h, w]`, optionally followed by SiLU.
    ///
    /// Each (image, group) is one task; its mean and variance are accumulated in
    /// double, two-pass, so that large activations lose no precision.
    public func groupNorm(_ input: Tensor, _ layer: GroupNormLayer, silu: Bool = false) -> Tensor {
        precondition(input.shape.count >= 2 && input.shape[1] == layer.channels,
                     "group norm of \(layer.channels) channels applied to \(input.shape)")
        let batch = input.shape[0]
        let plane = input.shape.dropFirst(2).reduce(1, *)
        let channelsPerGroup = layer.channels / layer.groups
        let groupCount = channelsPerGroup * plane
        let output = Tensor(uninitialized: input.shape)
        pool.parallelFor(batch * layer.groups) { task, _ in
            let offset = task * groupCount
            let group = task % layer.groups
            let source = input.data + offset
            let mean = VectorMath.sum(source, count: groupCount) { $0 } / Double(groupCount)
            let squares = VectorMath.sum(source, count: groupCount) { ($0 - mean) * ($0 - mean) }
            let inverseDeviation = 1 / (squares / Double(groupCount) + Double(layer.epsilon)).squareRoot()
            for c in 0..<channelsPerGroup {
                let channel = group * channelsPerGroup + c
                // y = (x - mean) * gain + bias, the mean split into two floats: x - high is
                // exact for x near the mean, so large offsets cost no precision.
                let high = Float(mean)
                let low = Float(mean - Double(high))
                let gain = Float(Double(layer.weight.data[channel]) * inverseDeviation)
                let shift = layer.bias.data[channel]
                let line = source + c * plane
                let out = output.data + offset + c * plane
                if silu {
                    VectorMath.map(line, out, count: plane) { VectorMath.silu(shift.addingProduct($0 - high - low, gain)) }
                } else {
                    VectorMath.map(line, out, count: plane) { shift.addingProduct($0 - high - low, gain) }
                }
            }
        }
        return output
    }
}
