import DiffusionKernels
import Foundation

/// A U-Net's class input, diffusers' `class_embedding`, added to the time
/// embedding: a table of `num_class_embeds` rows (class labels, or the noise
/// level of Stable Diffusion's x4 upscaler), or with `class_embed_type:
/// "timestep"` the time embedding's own sinusoidal features of the input fed
/// through a second two-layer MLP (the augmentation level of a cascade's
/// super-resolution stage, as Imagen and DeepFloyd IF condition on it).
public enum ClassEmbeddingType: Sendable, Equatable {
    case table(count: Int)
    case timestep

    /// `class_embed_type` and `num_class_embeds` of a U-Net config. "identity"
    /// (the caller passes embedding vectors) and the projection types are
    /// inputs no pipeline here produces, and are refused naming the key.
    static func read(_ reader: inout ConfigReader) throws -> ClassEmbeddingType? {
        let count = try reader.int("num_class_embeds")
        switch reader.value("class_embed_type") {
        case nil, is NSNull:
            return try count.map { count in
                guard count >= 1 else { throw reader.unsupported("num_class_embeds", count) }
                return .table(count: count)
            }
        case "timestep" as String:
            return .timestep
        case let other?:
            throw DiffusionError("\(reader.source): class_embed_type \(ConfigReader.render(other)) is not supported (null with num_class_embeds, or \"timestep\", are)")
        }
    }
}

/// The weights of a `ClassEmbeddingType`.
struct ClassEmbedding: Sendable {
    private enum Weights: Sendable {
        case table(Tensor)
        case timestep(LinearLayer, LinearLayer)
    }
    private let weights: Weights
    /// The sinusoid the time embedding uses, which "timestep" shares.
    private let featureDim: Int
    private let flipSinToCos: Bool
    private let freqShift: Float

    init(_ w: inout WeightReader, _ type: ClassEmbeddingType, featureDim: Int, timeEmbedDim: Int, flipSinToCos: Bool,
         freqShift: Float) throws
    {
        switch type {
        case .table(let count): weights = .table(try w.tensor("class_embedding.weight", shape: [count, timeEmbedDim]))
        case .timestep:
            weights = .timestep(try w.linear("class_embedding.linear_1", in: featureDim, out: timeEmbedDim),
                                try w.linear("class_embedding.linear_2", in: timeEmbedDim, out: timeEmbedDim))
        }
        (self.featureDim, self.flipSinToCos, self.freqShift) = (featureDim, flipSinToCos, freqShift)
    }

    /// The embedding of each image's class input `[batch, time_embed_dim]`.
    func callAsFunction(_ inputs: [Int], on k: KernelRuntime) throws -> Tensor {
        switch weights {
        case .table(let table):
            if let bad = inputs.first(where: { !(0..<table.shape[0]).contains($0) }) {
                throw DiffusionError("class label \(bad) outside 0..<\(table.shape[0])")
            }
            return k.embeddingLookup(table, indices: inputs)
        case .timestep(let first, let second):
            let features = k.timestepEmbedding(inputs.map(Float.init), dimension: featureDim, flipSinToCos: flipSinToCos,
                                               freqShift: freqShift)
            return k.linear(k.linear(features, first), second, siluInput: true)
        }
    }

    /// The time embedding plus the class inputs' (one per image), checked: a
    /// model with a class embedding needs them, one without takes none.
    static func add(_ embedding: ClassEmbedding?, _ inputs: [Int]?, to time: Tensor, batch: Int, on k: KernelRuntime)
        throws -> Tensor
    {
        switch (embedding, inputs) {
        case let (embedding?, inputs?):
            guard inputs.count == batch else { throw DiffusionError("\(inputs.count) class labels for a batch of \(batch)") }
            return k.add(time, try embedding(inputs, on: k))
        case (_?, nil): throw DiffusionError("this model is class-conditional: give a class label per image")
        case (nil, _?): throw DiffusionError("this model is not class-conditional: it takes no class labels")
        case (nil, nil): return time
        }
    }
}
