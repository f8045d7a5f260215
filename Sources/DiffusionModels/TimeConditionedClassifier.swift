import DiffusionKernels
import Foundation

/// The project's noisy classifier p(y | x_t), the model classifier guidance uses:
/// `classifier/config.json` + `classifier/model.safetensors` in a model directory.
///
/// Architecture (tensor names in parentheses):
/// - time: t ↦ sinusoidal embedding of width `block_out_channels[0]` (as the U-Net's,
///   with `flip_sin_to_cos` and `freq_shift`) ↦ linear (`time_embedding.linear_1`)
///   ↦ SiLU ↦ linear (`time_embedding.linear_2`) = temb, then a = SiLU(temb);
/// - `conv_in`: 3x3 convolution, `in_channels` → c₀;
/// - block i (`blocks.i`): z = 3x3 conv (`conv`) + per-channel (`time_proj` a), h = SiLU(z);
///   then, except in the last block, d = 3x3 stride-2 conv (`downsample`), h = SiLU(d);
/// - mean over pixels, then a linear `head` to `num_classes` logits.
/// No normalization layers, so the input gradient is one exact backward pass.
/// config.json: `{"_class_name": "TimeConditionedClassifier", "in_channels", "sample_size",
/// "block_out_channels", "num_classes", "flip_sin_to_cos", "freq_shift"}`.
public final class TimeConditionedClassifier: NoisyClassifier {
    struct Block: Sendable {
        let conv: Conv2DLayer
        let timeProjection: LinearLayer
        let downsample: Conv2DLayer?
    }

    public let inChannels: Int
    public let numClasses: Int
    let flipSinToCos: Bool
    let freqShift: Float
    let timeLinear1: LinearLayer
    let timeLinear2: LinearLayer
    let convIn: Conv2DLayer
    let blocks: [Block]
    let head: LinearLayer

    public init(config data: Data, weights: any WeightSource, source: String) throws {
        guard let object = try? JSONSerialization.jsonObject(with: data), let keys = object as? [String: Any] else {
            throw DiffusionError("\(source): not a JSON object")
        }
        var reader = ConfigReader(keys: keys, source: source)
        try reader.require("_class_name", oneOf: ["TimeConditionedClassifier"])
        inChannels = try reader.int("in_channels") ?? 1
        _ = reader.value("sample_size")
        guard let channels = try reader.ints("block_out_channels"), !channels.isEmpty else {
            throw DiffusionError("\(source): block_out_channels must list the channels of each block")
        }
        guard let classes = try reader.int("num_classes"), classes >= 2 else {
            throw DiffusionError("\(source): num_classes must be at least 2")
        }
        numClasses = classes
        flipSinToCos = try reader.bool("flip_sin_to_cos") ?? true
        freqShift = try reader.float("freq_shift") ?? 0
        try reader.rejectUnknownKeys()

        var w = WeightReader(source: weights)
        let timeDim = 4 * channels[0]
        timeLinear1 = try w.linear("time_embedding.linear_1", in: channels[0], out: timeDim)
        timeLinear2 = try w.linear("time_embedding.linear_2", in: timeDim, out: timeDim)
        convIn = try w.conv("conv_in", in: inChannels, out: channels[0], kernel: 3, padding: .uniform(1))
        blocks = try channels.enumerated().map { i, out in
            let inChannels = i == 0 ? channels[0] : channels[i - 1]
            return Block(
                conv: try w.conv("blocks.\(i).conv", in: inChannels, out: out, kernel: 3, padding: .uniform(1)),
                timeProjection: try w.linear("blocks.\(i).time_proj", in: timeDim, out: out),
                downsample: i == channels.count - 1
                    ? nil : try w.conv("blocks.\(i).downsample", in: out, out: out, kernel: 3, stride: 2, padding: .uniform(1)))
        }
        head = try w.linear("head", in: channels[channels.count - 1], out: classes)
        try w.rejectUnused()
    }

    /// The forward pass, keeping the pre-activations the backward pass needs.
    struct Trace {
        var logits: Tensor
        var preActivations: [(z: Tensor, d: Tensor?)]
        var shapes: [(height: Int, width: Int)]
    }

    func trace(_ x: Tensor, timesteps: [Float], on k: KernelRuntime) -> Trace {
        var time = k.timestepEmbedding(timesteps, dimension: timeLinear1.inFeatures, flipSinToCos: flipSinToCos,
                                       freqShift: freqShift)
        time = k.silu(k.linear(k.linear(time, timeLinear1), timeLinear2, siluInput: true))
        var h = k.conv2d(x, convIn)
        var pre: [(z: Tensor, d: Tensor?)] = []
        var shapes: [(height: Int, width: Int)] = []
        for block in blocks {
            shapes.append((h.shape[2], h.shape[3]))
            let z = k.conv2d(h, block.conv, epilogue: ConvEpilogue(channelBias: k.linear(time, block.timeProjection)))
            h = k.silu(z)
            var d: Tensor?
            if let downsample = block.downsample {
                d = k.conv2d(h, downsample)
                h = k.silu(d!)
            }
            pre.append((z, d))
        }
        let (batch, channels, plane) = (h.shape[0], h.shape[1], h.shape[2] * h.shape[3])
        let pooled = Tensor(uninitialized: [batch, channels])
        for i in 0..<(batch * channels) {
            var sum: Float = 0
            for p in 0..<plane { sum += h.data[i * plane + p] }
            pooled.data[i] = sum / Float(plane)
        }
        return Trace(logits: k.linear(pooled, head), preActivations: pre, shapes: shapes)
    }

    /// log p(y | x_t) for each image (log-softmax of the logits at its label).
    public func logProbabilities(_ x: Tensor, timesteps: [Float], labels: [Int], on k: KernelRuntime) -> [Double] {
        let logits = trace(x, timesteps: timesteps, on: k).logits
        return labels.enumerated().map { image, label in
            let row = (0..<numClasses).map { Double(logits.data[image * numClasses + $0]) }
            let peak = row.max()!
            return row[label] - peak - log(row.map { exp($0 - peak) }.reduce(0, +))
        }
    }

    public func logProbabilityGradient(_ sample: Tensor, timesteps: [Float], alphasCumprod: [Double], labels: [Int],
                                       on k: KernelRuntime) throws -> Tensor
    {
        guard sample.shape.count == 4, sample.shape[1] == inChannels else {
            throw DiffusionError("the classifier takes samples [batch, \(inChannels), height, width], not \(sample.shape)")
        }
        if let bad = labels.first(where: { !(0..<numClasses).contains($0) }) {
            throw DiffusionError("class label \(bad) outside the classifier's 0..<\(numClasses)")
        }
        let t = trace(sample, timesteps: timesteps, on: k)
        let batch = sample.shape[0]
        // ∂ log softmax(ℓ)_y / ∂ℓ = onehot(y) − softmax(ℓ), then back through the head and the mean.
        let last = t.preActivations.last!
        let final = last.d ?? last.z
        let (channels, height, width) = (final.shape[1], final.shape[2], final.shape[3])
        var gradient = Tensor(uninitialized: final.shape)
        for image in 0..<batch {
            let row = (0..<numClasses).map { Double(t.logits.data[image * numClasses + $0]) }
            let peak = row.max()!
            let exps = row.map { exp($0 - peak) }
            let total = exps.reduce(0, +)
            let dLogits = (0..<numClasses).map { Float(($0 == labels[image] ? 1 : 0) - exps[$0] / total) }
            for c in 0..<channels {
                var dPooled: Float = 0
                for j in 0..<numClasses { dPooled += head.weight.data[j * channels + c] * dLogits[j] }
                let share = dPooled / Float(height * width)
                for p in 0..<(height * width) { gradient.data[(image * channels + c) * height * width + p] = share }
            }
        }
        for (i, block) in blocks.enumerated().reversed() {
            let (z, d) = t.preActivations[i]
            if let downsample = block.downsample, let d {
                gradient = k.conv2dInputGradient(siluBackward(gradient, d), downsample, inputHeight: z.shape[2], inputWidth: z.shape[3])
            }
            let size = t.shapes[i]
            gradient = k.conv2dInputGradient(siluBackward(gradient, z), block.conv, inputHeight: size.height, inputWidth: size.width)
        }
        return k.conv2dInputGradient(gradient, convIn, inputHeight: sample.shape[2], inputWidth: sample.shape[3])
    }

    /// g · SiLU′(z), with SiLU′(z) = σ(z)·(1 + z·(1 − σ(z))).
    func siluBackward(_ g: Tensor, _ z: Tensor) -> Tensor {
        let out = Tensor(uninitialized: g.shape)
        for i in 0..<g.count {
            let s = 1 / (1 + exp(-z.data[i]))
            out.data[i] = g.data[i] * s * (1 + z.data[i] * (1 - s))
        }
        return out
    }
}
