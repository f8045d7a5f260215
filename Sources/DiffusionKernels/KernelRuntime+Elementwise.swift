extension KernelRuntime {
    /// SiLU, `x·σ(x)`, elementwise.
    public func silu(_ input: Tensor) -> Tensor {
        let output = Tensor(uninitialized: input.shape)
        VectorMath.map(input.data, output.data, count: input.count) { VectorMath.silu($0) }
        return output
    }

    /// The activations of transformer feed-forward layers, elementwise: `gelu`
    /// is PyTorch's exact x·Φ(x), `quickGelu` CLIP's x·σ(1.702x).
    public enum Activation: String, Sendable { case gelu, quickGelu = "quick_gelu" }

    public func activate(_ input: Tensor, _ activation: Activation) -> Tensor {
        let output = Tensor(uninitialized: input.shape)
        switch activation {
        case .gelu: VectorMath.map(input.data, output.data, count: input.count) { VectorMath.gelu($0) }
        case .quickGelu: VectorMath.map(input.data, output.data, count: input.count) { $0 / (1 + VectorMath.exp(-1.702 * $0)) }
        }
        return output
    }

    /// GEGLU of a channel-major projection `[n, 2c, ...]`: its first c channels
    /// times gelu of its last c (diffusers' `hidden, gate = proj(x).chunk(2)`).
    public func geglu(_ projected: Tensor) -> Tensor {
        let channels = projected.shape[1] / 2
        var shape = projected.shape
        shape[1] = channels
        let output = Tensor(uninitialized: shape)
        let half = output.sliceCount
        pool.parallelFor(projected.shape[0] * channels) { task, _ in
            let plane = half / channels
            let (image, channel) = (task / channels, task % channels)
            let hidden = projected.data + image * 2 * half + channel * plane
            let gate = hidden + half
            let out = output.data + image * half + channel * plane
            for i in 0..<plane { out[i] = hidden[i] * VectorMath.gelu(gate[i]) }
        }
        return output
    }

    /// FiLM of `x` `[n, c, ...]` by `parameters` `[n, 2c]` (the scales, then the
    /// shifts, as torch.chunk splits them): x·(1 + scale) + shift per image and channel.
    public func scaleShift(_ x: Tensor, by parameters: Tensor) -> Tensor {
        let (batch, channels) = (x.shape[0], x.shape[1])
        precondition(parameters.shape == [batch, 2 * channels], "scale and shift \(parameters.shape) for \(x.shape)")
        let plane = x.sliceCount / channels
        let output = Tensor(uninitialized: x.shape)
        for n in 0..<batch {
            for c in 0..<channels {
                let scale = 1 + parameters.data[n * 2 * channels + c], shift = parameters.data[n * 2 * channels + channels + c]
                let offset = (n * channels + c) * plane
                for i in 0..<plane { output.data[offset + i] = x.data[offset + i] * scale + shift }
            }
        }
        return output
    }

    /// `a·x + b` elementwise (diffusers' `center_input_sample` is `2x - 1`).
    public func affine(_ input: Tensor, scale: Float, shift: Float) -> Tensor {
        let output = Tensor(uninitialized: input.shape)
        VectorMath.map(input.data, output.data, count: input.count) { shift.addingProduct($0, scale) }
        return output
    }

    /// Concatenates `[batch, c_i, h, w]` tensors along the channel dimension.
    public func concatenateChannels(_ parts: [Tensor]) -> Tensor {
        let batch = parts[0].shape[0]
        let spatial = Array(parts[0].shape.dropFirst(2))
        precondition(parts.allSatisfy { $0.shape[0] == batch && Array($0.shape.dropFirst(2)) == spatial },
                     "concatenated tensors differ in batch or size: \(parts.map(\.shape))")
        let output = Tensor(uninitialized: [batch, parts.reduce(0) { $0 + $1.shape[1] }] + spatial)
        var destination = output.data
        for image in 0..<batch {
            for part in parts {
                destination.update(from: part.data + image * part.sliceCount, count: part.sliceCount)
                destination += part.sliceCount
            }
        }
        return output
    }

    /// `a + b` elementwise, for tensors of one shape.
    public func add(_ a: Tensor, _ b: Tensor) -> Tensor {
        precondition(a.shape == b.shape, "cannot add \(a.shape) and \(b.shape)")
        let output = Tensor(uninitialized: a.shape)
        for i in 0..<a.count { output.data[i] = a.data[i] + b.data[i] }
        return output
    }
}
