import DiffusionKernels
import DiffusionPluginABI
import Foundation
import Synchronization

/// The host side of the plugin ABI: the one `dfn_host` table every plugin gets,
/// and the objects behind its opaque handles (options and generators).
public enum PluginHost {
    /// Where plugin log lines go; the daemon points it at its own log.
    public static let logSink = Mutex<@Sendable (String) -> Void>({ line in
        FileHandle.standardError.write(Data((line + "\n").utf8))
    })

    static func log(_ line: String) { logSink.withLock { $0 }(line) }

    /// DFN_ABI_VERSION of this host (the macro's casts keep Swift from importing it).
    public static let abiVersion = UInt32(DFN_ABI_MAJOR) << 16 | UInt32(DFN_ABI_MINOR)

    /// The table handed to every plugin; it lives for the life of the process.
    nonisolated(unsafe) static let table: UnsafePointer<dfn_host> = {
        let table = UnsafeMutablePointer<dfn_host>.allocate(capacity: 1)
        table.initialize(to: dfn_host(
            abi_version: abiVersion,
            size: UInt32(MemoryLayout<dfn_host>.size),
            log: { level, component, message in
                let names = ["debug", "info", "warning", "error"]
                let name = (0..<names.count).contains(Int(level)) ? names[Int(level)] : "log"
                PluginHost.log("plugin \(component.map { String(cString: $0) } ?? "?") \(name): \(message.map { String(cString: $0) } ?? "")")
            },
            option_number: { options, key, value in
                lookup(options, key) { raw in
                    guard let number = raw as? NSNumber, !isBool(number) else { return false }
                    value!.pointee = number.doubleValue
                    return true
                }
            },
            option_bool: { options, key, value in
                lookup(options, key) { raw in
                    guard let number = raw as? NSNumber, isBool(number) else { return false }
                    value!.pointee = number.boolValue ? 1 : 0
                    return true
                }
            },
            option_string: { options, key, value in
                lookup(options, key) { raw in
                    guard let text = raw as? String else { return false }
                    value!.pointee = componentOptions(options).cString(String(cString: key!), text)
                    return true
                }
            },
            option_numbers: { options, key, values, capacity in
                guard let raw = componentOptions(options).value(String(cString: key!)) else { return 0 }
                guard let list = raw as? [Any], let numbers = Optional(list.compactMap { ($0 as? NSNumber).flatMap { isBool($0) ? nil : $0.doubleValue } }),
                      numbers.count == list.count
                else { return -1 }
                for (i, number) in numbers.prefix(Int(capacity)).enumerated() { values![i] = number }
                return Int64(numbers.count)
            },
            axpby: { count, a, x, b, y in
                for i in 0..<Int(count) { y![i] = a * x![i] + b * y![i] }
            },
            clamp: { count, low, high, x in
                for i in 0..<Int(count) { x![i] = min(max(x![i], low), high) }
            },
            abs_quantile: { count, x, q in absQuantile(UnsafeBufferPointer(start: x, count: Int(count)), q) },
            random_normal: { generator, count, out in
                Unmanaged<ImageGenerator>.fromOpaque(UnsafeRawPointer(generator!)).takeUnretainedValue()
                    .generator.fillNormal(out!, count: Int(count))
            },
            classifier_gradient: { classifier, images, imageSize, sample, timestep, labels, gradient, message, errorSize in
                let context = Unmanaged<ClassifierContext>.fromOpaque(classifier!).takeUnretainedValue()
                do {
                    try context.gradient(images: Int(images), imageSize: Int(imageSize), sample: sample!,
                                         timestep: Int(timestep), labels: labels!, into: gradient!)
                    return Int32(DFN_OK)
                } catch {
                    let text = Array("\(error)".utf8.prefix(max(errorSize - 1, 0)))
                    for (i, byte) in text.enumerated() { message![i] = CChar(bitPattern: byte) }
                    if errorSize > 0 { message![text.count] = 0 }
                    return Int32(DFN_ERROR)
                }
            }))
        return UnsafePointer(table)
    }()

    private static func componentOptions(_ pointer: OpaquePointer?) -> ComponentOptions {
        Unmanaged<ComponentOptions>.fromOpaque(UnsafeRawPointer(pointer!)).takeUnretainedValue()
    }

    /// 1 when present and `accept`ed, 0 when absent or null, -1 for another type.
    private static func lookup(_ options: OpaquePointer?, _ key: UnsafePointer<CChar>?, _ accept: (Any) -> Bool) -> Int32 {
        guard let raw = componentOptions(options).value(String(cString: key!)) else { return 0 }
        return accept(raw) ? 1 : -1
    }

    /// JSONSerialization returns `true` and `false` as NSNumbers of C type `char`.
    static func isBool(_ number: NSNumber) -> Bool { String(cString: number.objCType) == "c" }
}

/// torch.quantile of |x| with linear interpolation between order statistics.
func absQuantile(_ x: UnsafeBufferPointer<Float>, _ q: Double) -> Float {
    guard !x.isEmpty else { return 0 }
    let sorted = x.map { abs($0) }.sorted()
    let position = q * Double(sorted.count - 1)
    let below = Int(position.rounded(.down)), above = min(below + 1, sorted.count - 1)
    let fraction = Float(position - Double(below))
    return sorted[below] + fraction * (sorted[above] - sorted[below])
}

/// One image's random stream, behind a `dfn_generator` handle.
public final class ImageGenerator: @unchecked Sendable {
    public var generator: Philox

    public init(seed: UInt64) { generator = Philox(seed: seed) }

    /// The opaque handle plugins receive; valid while this object lives.
    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }
}

extension ComponentOptions {
    /// The opaque handle plugins receive; valid while these options live.
    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }
}
