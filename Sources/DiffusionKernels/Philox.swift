import Foundation

/// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
/// a counter-based generator: its whole state is a 64-bit key and a 128-bit counter,
/// so a saved generator resumes exactly and streams never overlap.
public struct Philox: Sendable, Equatable {
    public var key: (UInt32, UInt32)
    public var counter: (UInt32, UInt32, UInt32, UInt32)
    private var buffer: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
    private var buffered = 0

    public init(seed: UInt64) {
        key = (UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32))
        counter = (0, 0, 0, 0)
    }

    /// The whole state as 11 words (key, counter, the buffered block, how much of
    /// it is left), for checkpoints: a generator rebuilt from it continues exactly.
    public var state: [UInt32] {
        [key.0, key.1, counter.0, counter.1, counter.2, counter.3, buffer.0, buffer.1, buffer.2, buffer.3, UInt32(buffered)]
    }

    public init?(state: [UInt32]) {
        guard state.count == 11, state[10] <= 4 else { return nil }
        key = (state[0], state[1])
        counter = (state[2], state[3], state[4], state[5])
        buffer = (state[6], state[7], state[8], state[9])
        buffered = Int(state[10])
    }

    public static func == (a: Philox, b: Philox) -> Bool {
        a.key == b.key && a.counter == b.counter && a.buffered == b.buffered && a.buffer == b.buffer
    }

    /// The next 32 random bits.
    public mutating func next() -> UInt32 {
        if buffered == 0 {
            buffer = Self.block(counter: counter, key: key)
            counter.0 &+= 1
            if counter.0 == 0 { counter.1 &+= 1 }
            buffered = 4
        }
        buffered -= 1
        switch buffered {
        case 3: return buffer.0
        case 2: return buffer.1
        case 1: return buffer.2
        default: return buffer.3
        }
    }

    /// A uniform float in (0, 1], 24 random bits.
    public mutating func nextUniform() -> Float { (Float(next() >> 8) + 1) * 0x1p-24 }

    /// A standard normal float by the Box–Muller transform, one per call.
    public mutating func nextNormal() -> Float {
        let u = Double(nextUniform()), v = Double(nextUniform())
        return Float((-2 * log(u)).squareRoot() * cos(2 * Double.pi * v))
    }

    /// Fills `count` floats with standard normals.
    public mutating func fillNormal(_ destination: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { destination[i] = nextNormal() }
    }

    /// One Philox4x32-10 block: four 32-bit outputs for a counter and key.
    public static func block(counter c: (UInt32, UInt32, UInt32, UInt32), key k: (UInt32, UInt32))
        -> (UInt32, UInt32, UInt32, UInt32)
    {
        var (x0, x1, x2, x3) = c
        var (k0, k1) = k
        for _ in 0..<10 {
            let p0 = UInt64(0xD251_1F53) &* UInt64(x0)
            let p1 = UInt64(0xCD9E_8D57) &* UInt64(x2)
            (x0, x1, x2, x3) = (UInt32(truncatingIfNeeded: p1 >> 32) ^ x1 ^ k0, UInt32(truncatingIfNeeded: p1),
                                UInt32(truncatingIfNeeded: p0 >> 32) ^ x3 ^ k1, UInt32(truncatingIfNeeded: p0))
            k0 &+= 0x9E37_79B9
            k1 &+= 0xBB67_AE85
        }
        return (x0, x1, x2, x3)
    }
}

