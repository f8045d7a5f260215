/// Elementwise math shared by the ops, written so that the compiler vectorizes
/// the loops around it (AVX-512 with `-target-cpu native`).
enum VectorMath {
    /// e^x to about 2 ulp: range reduction by ln 2 and a degree-6 polynomial.
    ///
    /// Written as scalar code without branches or libm calls so that the loops
    /// calling it vectorize; rounding uses the 1.5·2²³ trick, whose low mantissa
    /// bits then hold the integer n of x = n·ln 2 + r.
    @inline(__always)
    static func exp(_ x: Float) -> Float {
        let clamped = min(max(x, -87.3), 88.37)
        let shifted = (12_582_912 as Float).addingProduct(clamped, 1.442_695_04)
        let n = shifted - 12_582_912
        let r = clamped.addingProduct(n, -0.693_145_75).addingProduct(n, -1.428_606_8e-6)
        var p: Float = 1.0 / 720
        p = (1.0 / 120 as Float).addingProduct(r, p)
        p = (1.0 / 24 as Float).addingProduct(r, p)
        p = (1.0 / 6 as Float).addingProduct(r, p)
        p = (0.5 as Float).addingProduct(r, p)
        p = (1 as Float).addingProduct(r, p)
        p = (1 as Float).addingProduct(r, p)
        let exponent = (shifted.bitPattern &- 0x4B40_0000 &+ 127) &<< 23
        return p * Float(bitPattern: exponent)
    }

    /// x·σ(x), the SiLU activation.
    @inline(__always)
    static func silu(_ x: Float) -> Float { x / (1 + exp(-x)) }

    /// The exact GELU, x·Φ(x) = x/2·(1 + erf(x/√2)), with Abramowitz and Stegun's
    /// erf 7.1.26 (absolute error under 1.5e-7) so that it vectorizes.
    @inline(__always)
    static func gelu(_ x: Float) -> Float {
        let z = abs(x) * 0.707_106_78
        let t = 1 / (1 as Float).addingProduct(0.327_591_1, z)
        var p: Float = 1.061_405_429
        p = (-1.453_152_027 as Float).addingProduct(p, t)
        p = (1.421_413_741 as Float).addingProduct(p, t)
        p = (-0.284_496_736 as Float).addingProduct(p, t)
        p = (0.254_829_592 as Float).addingProduct(p, t)
        let erfAbs = 1 - p * t * exp(-z * z)
        let erf = x < 0 ? -erfAbs : erfAbs
        return 0.5 * x * (1 + erf)
    }

    /// Applies `transform` to `count` floats from `source` into `destination` (which may alias it).
    @inline(__always)
    static func map(
        _ source: UnsafePointer<Float>, _ destination: UnsafeMutablePointer<Float>, count: Int,
        _ transform: (Float) -> Float
    ) {
        for i in 0..<count { destination[i] = transform(source[i]) }
    }

    /// The sum of `term(x)` over `count` floats, in double, in a fixed order.
    @inline(__always)
    static func sum(
        _ source: UnsafePointer<Float>, count: Int, _ term: (SIMD8<Double>) -> SIMD8<Double>
    ) -> Double {
        var low = SIMD8<Double>(), high = SIMD8<Double>()
        var i = 0
        while i + 16 <= count {
            let v = UnsafeRawPointer(source + i).loadUnaligned(as: SIMD16<Float>.self)
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

}
