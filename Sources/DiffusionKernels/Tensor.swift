import Foundation

/// A dense float32 tensor in C (row-major) order.
///
/// Tensors are reference objects: kernels write their results into new tensors
/// and never change their inputs, so sharing one between threads is safe as long
/// as nobody writes through `data` after handing it out.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    /// 64-byte aligned storage of `count` floats.
    public let data: UnsafeMutablePointer<Float>

    /// A tensor whose contents are unspecified until written.
    public init(uninitialized shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        self.data = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    public convenience init(zeros shape: [Int]) {
        self.init(uninitialized: shape)
        data.initialize(repeating: 0, count: count)
    }

    public convenience init(shape: [Int], scalars: [Float]) {
        self.init(uninitialized: shape)
        precondition(scalars.count == count, "\(scalars.count) values for shape \(shape)")
        scalars.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit { UnsafeMutableRawPointer(data).deallocate() }

    public var scalars: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    /// Whether every element is a finite number (no NaN, no infinity).
    public var isFinite: Bool {
        // x − x is 0 for finite x and NaN otherwise; the sum stays 0 only when all are finite.
        var total: Float = 0
        for i in 0..<count { total += data[i] - data[i] }
        return total == 0
    }

    /// The number of elements in one slice along the first dimension (one image of a batch).
    public var sliceCount: Int { shape.isEmpty ? 1 : count / max(shape[0], 1) }

    /// A copy with another shape of the same element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        let result = Tensor(uninitialized: newShape)
        precondition(result.count == count, "cannot reshape \(shape) to \(newShape)")
        result.data.update(from: data, count: count)
        return result
    }

    /// Slices `range` of the first dimension into a new tensor.
    public func slice(_ range: Range<Int>) -> Tensor {
        var newShape = shape
        newShape[0] = range.count
        let result = Tensor(uninitialized: newShape)
        result.data.update(from: data + range.lowerBound * sliceCount, count: result.count)
        return result
    }

    /// Channels `range` of a `[n, C, ...]` tensor.
    public func slicingChannels(_ range: Range<Int>) -> Tensor {
        var newShape = shape
        newShape[1] = range.count
        let result = Tensor(uninitialized: newShape)
        let plane = shape.dropFirst(2).reduce(1, *)
        for n in 0..<shape[0] {
            (result.data + n * range.count * plane).update(from: data + (n * shape[1] + range.lowerBound) * plane,
                                                           count: range.count * plane)
        }
        return result
    }

    /// `[n, C1, ...]` and `[n, C2, ...]` side by side as `[n, C1 + C2, ...]`.
    public static func concatenatingChannels(_ a: Tensor, _ b: Tensor) -> Tensor {
        precondition(a.shape[0] == b.shape[0] && Array(a.shape.dropFirst(2)) == Array(b.shape.dropFirst(2)),
                     "tensors \(a.shape) and \(b.shape) differ beyond their channels")
        var newShape = a.shape
        newShape[1] = a.shape[1] + b.shape[1]
        let result = Tensor(uninitialized: newShape)
        let (first, second) = (a.sliceCount, b.sliceCount)
        for n in 0..<a.shape[0] {
            (result.data + n * (first + second)).update(from: a.data + n * first, count: first)
            (result.data + n * (first + second) + first).update(from: b.data + n * second, count: second)
        }
        return result
    }

    /// `[n, a, b, ...]` as `[n, b, a]` (the trailing axes taken as one): token-major
    /// sequences `[n, tokens, features]` to the channel-major maps the ops take, and back.
    public func swappingLastAxes(_ first: Int) -> Tensor {
        let (batch, second) = (shape[0], sliceCount / first)
        let result = Tensor(uninitialized: [batch, second, first])
        for n in 0..<batch {
            let (source, destination) = (data + n * sliceCount, result.data + n * sliceCount)
            for i in 0..<first { for j in 0..<second { destination[j * first + i] = source[i * second + j] } }
        }
        return result
    }

    /// A copy with every value multiplied by `factor`.
    public func scaled(by factor: Float) -> Tensor {
        let result = Tensor(uninitialized: shape)
        for i in 0..<count { result.data[i] = data[i] * factor }
        return result
    }

    /// Concatenates tensors of the same trailing shape along the first dimension.
    public static func stacking(_ parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty, "nothing to stack")
        let tail = Array(parts[0].shape.dropFirst())
        precondition(parts.allSatisfy { Array($0.shape.dropFirst()) == tail }, "stacked tensors differ in shape")
        let result = Tensor(uninitialized: [parts.reduce(0) { $0 + $1.shape[0] }] + tail)
        var offset = 0
        for part in parts {
            (result.data + offset).update(from: part.data, count: part.count)
            offset += part.count
        }
        return result
    }

    /// Whether both tensors have the same shape and the same bits.
    public func isBitIdentical(to other: Tensor) -> Bool {
        shape == other.shape && memcmp(data, other.data, count * MemoryLayout<Float>.stride) == 0
    }

    /// The largest absolute elementwise difference to a tensor of the same shape.
    public func maxAbsDifference(_ other: Tensor) -> Float {
        precondition(shape == other.shape, "shapes \(shape) and \(other.shape) differ")
        var worst: Float = 0
        for i in 0..<count { worst = max(worst, abs(data[i] - other.data[i])) }
        return worst
    }
}
