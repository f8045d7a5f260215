/// Vectorized elementwise math shared by the ops.
///
/// Sixteen lanes match one AVX-512 register; the scalar tail runs the same
/// formula on a splatted vector so that every element is computed identically.
typealias Float16x = SIMD16<Float>

enum VectorMath {
    /// e^x to about 2 ulp: range reduction by ln 2 and a degree-6 polynomial.
    @inline(__always)
    static func exp(_ x: Float16x) -> Float16x {
        let clamped = x.clamped(lowerBound: Float16x(repeating: -87.3), upperBound: Float16x(repeating: 88.37))
        let n = (clamped * 1.442_695_04).rounded(.toNearestOrEven)
        var r = clamped.addingProduct(n, Float16x(repeating: -0.693_145_75))
        r = r.addingProduct(n, Float16x(repeating: -1.428_606_8e-6))
        var p = Float16x(repeating: 1.0 / 720)
        p = Float16x(repeating: 1.0 / 120).addingProduct(r, p)
        p = Float16x(repeating: 1.0 / 24).addingProduct(r, p)
        p = Float16x(repeating: 1.0 / 6).addingProduct(r, p)
        p = Float16x(repeating: 0.5).addingProduct(r, p)
        p = Float16x(repeating: 1).addingProduct(r, p)
        p = Float16x(repeating: 1).addingProduct(r, p)
        let exponent = (SIMD16<Int32>(n) &+ 127) &<< 23
        return p * unsafeBitCast(exponent, to: Float16x.self)
    }

    /// x·σ(x), the SiLU activation.
    @inline(__always)
    static func silu(_ x: Float16x) -> Float16x {
        x / (1 + exp(-x))
    }

    /// The sum of `term(x)` over `count` floats, in double, in a fixed order.
    @inline(__always)
    static func sum(
        _ source: UnsafePointer<Float>, count: Int, _ term: (SIMD8<Double>) -> SIMD8<Double>
    ) -> Double {
        var low = SIMD8<Double>(), high = SIMD8<Double>()
        var i = 0
        while i + 16 <= count {
            let v = UnsafeRawPointer(source + i).loadUnaligned(as: Float16x.self)
            low += term(SIMD8<Double>(v.lowHalf))
            high += term(SIMD8<Double>(v.highHalf))
            i += 16
        }
        var total = (low + high).sum()
        while i < count {
            total += term(SIMD8<Double>(repeating: Double(source[i])))[0]
            i += 1
        }
        return total
    }

    /// Applies `transform` to `count` floats from `source` into `destination` (which may alias it).
    @inline(__always)
    static func map(
        _ source: UnsafePointer<Float>, _ destination: UnsafeMutablePointer<Float>, count: Int,
        _ transform: (Float16x) -> Float16x
    ) {
        var i = 0
        while i + 16 <= count {
            let v = UnsafeRawPointer(source + i).loadUnaligned(as: Float16x.self)
            UnsafeMutableRawPointer(destination + i).storeBytes(of: transform(v), as: Float16x.self)
            i += 16
        }
        while i < count {
            destination[i] = transform(Float16x(repeating: source[i]))[0]
            i += 1
        }
    }
}
