extension KernelRuntime {
    /// The resampling of NCSN++ (diffusers' `upsample_2d` / `downsample_2d` with
    /// the FIR kernel (1, 3, 3, 1), i.e. `upfirdn2d`): by 2 in each direction.
    public enum FIRResample: Sendable { case up, down }

    /// `x` `[n, c, h, w]` resampled by 2 through the separable FIR kernel
    /// k = (1, 3, 3, 1)/8 (times 2 per axis when upsampling, diffusers' gain of
    /// factor²): zeros inserted (up), padded (2, 1) up or (1, 1) down, filtered,
    /// every second value kept (down).
    public func firResample(_ x: Tensor, _ direction: FIRResample) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (up, down) = direction == .up ? (2, 1) : (1, 2)
        let scale: Float = direction == .up ? 2 : 1
        let taps: [Float] = [1, 3, 3, 1].map { $0 / 8 * scale }
        let padBefore = direction == .up ? 2 : 1
        let (outH, outW) = direction == .up ? (2 * h, 2 * w) : (h / 2, w / 2)
        let rows = Tensor(uninitialized: [n * c, h, outW])  // along the width first
        let output = Tensor(uninitialized: [n, c, outH, outW])
        // One axis: out[o] = Σ_t taps[t] · padded[o·down + t], padded[m] = x[(m − before)/up] where that is whole
        func filter(_ input: UnsafePointer<Float>, stride: Int, length: Int, into out: UnsafeMutablePointer<Float>,
                    outStride: Int, outLength: Int) {
            for o in 0..<outLength {
                var sum: Float = 0
                for t in 0..<4 {
                    let m = o * down + t - padBefore
                    guard m >= 0, m % up == 0, m / up < length else { continue }
                    sum += taps[t] * input[(m / up) * stride]
                }
                out[o * outStride] = sum
            }
        }
        for plane in 0..<(n * c) {
            let source = x.data + plane * h * w, middle = rows.data + plane * h * outW
            for y in 0..<h { filter(source + y * w, stride: 1, length: w, into: middle + y * outW, outStride: 1, outLength: outW) }
            let target = output.data + plane * outH * outW
            for column in 0..<outW {
                filter(middle + column, stride: outW, length: h, into: target + column, outStride: outW, outLength: outH)
            }
        }
        return output
    }
}
