import COpenBLAS

extension KernelRuntime {
    /// `input [batch, in]` times `weight [out, in]` transposed, plus bias, optionally through SiLU first.
    ///
    /// Each row is its own sgemv: a batched sgemm would let the batch size pick
    /// OpenBLAS's kernel and change a row's bits with its neighbours.
    public func linear(_ input: Tensor, _ layer: LinearLayer, siluInput: Bool = false) -> Tensor {
        precondition(input.shape.count == 2 && input.shape[1] == layer.inFeatures,
                     "linear layer of \(layer.inFeatures) inputs applied to \(input.shape)")
        let batch = input.shape[0]
        let source = siluInput ? silu(input) : input
        let output = Tensor(uninitialized: [batch, layer.outFeatures])
        countProduct(batch, layer.outFeatures, layer.inFeatures)
        for row in 0..<batch {
            let y = output.data + row * layer.outFeatures
            if let bias = layer.bias {
                y.update(from: bias.data, count: layer.outFeatures)
            } else {
                y.initialize(repeating: 0, count: layer.outFeatures)
            }
            cblas_sgemv(
                CblasRowMajor, CblasNoTrans, Int32(layer.outFeatures), Int32(layer.inFeatures), 1,
                layer.weight.data, Int32(layer.inFeatures), source.data + row * layer.inFeatures, 1, 1, y, 1)
        }
        return output
    }
}
