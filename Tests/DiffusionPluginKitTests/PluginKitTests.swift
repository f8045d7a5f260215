import DiffusionPluginKit
import Foundation
import Testing

/// The options a fake host serves, by key (the host's lookups are C functions,
/// which cannot capture).
nonisolated(unsafe) var servedOptions: [String: Any] = [:]

/// A host table whose option lookups read `servedOptions`, with the host's
/// rules: 1 present with that type, 0 absent, -1 another type.
nonisolated(unsafe) let fakeHost: UnsafePointer<dfn_host> = {
    func lookup(_ key: UnsafePointer<CChar>?) -> Any? { servedOptions[String(cString: key!)] }
    let table = UnsafeMutablePointer<dfn_host>.allocate(capacity: 1)
    table.initialize(to: dfn_host(
        abi_version: pluginABIVersion, size: UInt32(MemoryLayout<dfn_host>.size), log: nil,
        option_number: { _, key, value in
            guard let raw = lookup(key) else { return 0 }
            guard let number = raw as? Double else { return -1 }
            value!.pointee = number
            return 1
        },
        option_bool: { _, key, value in
            guard let raw = lookup(key) else { return 0 }
            guard let flag = raw as? Bool else { return -1 }
            value!.pointee = flag ? 1 : 0
            return 1
        },
        option_string: { _, key, value in
            guard let raw = lookup(key) else { return 0 }
            guard let text = raw as? String else { return -1 }
            value!.pointee = UnsafePointer(strdup(text))  // leaked: a test's few strings
            return 1
        },
        option_numbers: nil, axpby: nil, clamp: nil, abs_quantile: nil, random_normal: nil, classifier_gradient: nil))
    return UnsafePointer(table)
}()

@Suite(.serialized) struct PluginKitTests {
    let options = PluginOptions(host: fakeHost, options: nil)

    @Test func optionsReadWithTheirTypesAndRanges() throws {
        servedOptions = ["scale": 3.5, "huge": -1e308, "text": "x", "steps": 2.5, "flag": true, "kind": "cosine"]
        #expect(try options.number("scale", default: 1, in: -10...10) == 3.5)
        #expect(try options.number("missing", default: 7, in: 0...10) == 7)
        #expect(refusal { try options.number("huge", default: 1, in: -1000...1000) } == "huge must lie in [-1000.0, 1000.0], not -1e+308")
        #expect(refusal { try options.number("text", default: 1) } == "text must be a number")
        #expect(refusal { try options.integer("steps", default: 1) } == "steps must be a whole number, not 2.5")
        #expect(try options.bool("flag", default: false))
        #expect(refusal { try options.choice("kind", default: "linear", allowed: ["linear", "leading"]) }
                == "kind \"cosine\" is not supported (one of: linear, leading)")
    }

    /// The message `body` refuses with; nil when it does not throw.
    func refusal(_ body: () throws -> Any) -> String? {
        do {
            _ = try body()
            return nil
        } catch {
            return (error as? PluginError)?.message ?? "\(error)"
        }
    }

    @Test func errorsReachTheHostAsOneTruncatedLine() {
        var buffer = [CChar](repeating: 65, count: 8)
        let status = reporting(&buffer, buffer.count) { throw PluginError("a long reason") }
        #expect(status == pluginError)
        #expect(String(cString: buffer) == "a long ")
        #expect(reporting(&buffer, buffer.count) {} == pluginOK)
    }

    @Test func aHostOfAnotherMajorOrAnOlderMinorIsDeclined() {
        var other = fakeHost.pointee
        other.abi_version = 2 << 16
        #expect(hostIsCompatible(fakeHost))
        #expect(!withUnsafePointer(to: &other) { hostIsCompatible($0) })
        other.abi_version = 1 << 16  // a 1.0 host cannot drive a 1.1 sampler
        #expect(!withUnsafePointer(to: &other) { hostIsCompatible($0) })
        #expect(!hostIsCompatible(nil))
    }

    @Test func sharedTimestepSpacingsAsDiffusersChoosesThem() throws {
        servedOptions = [:]
        var settings = try SamplerSettings(options)
        #expect(try settings.timesteps(steps: 4, trainSteps: 1000) == [750, 500, 250, 0])
        settings.timestepSpacing = .trailing
        #expect(try settings.timesteps(steps: 4, trainSteps: 1000) == [999, 749, 499, 249])
        settings.timestepSpacing = .linspace
        #expect(try settings.timesteps(steps: 4, trainSteps: 1000) == [999, 666, 333, 0])
        #expect(throws: PluginError.self) { try settings.timesteps(steps: 1001, trainSteps: 1000) }
        servedOptions = ["dynamic_thresholding_ratio": 1.5]
        #expect(throws: PluginError.self) { try SamplerSettings(options) }
    }

    /// State blobs keep every bit (so a resumed sampler continues identically)
    /// and refuse what is not theirs.
    @Test func stateBlobsRoundTripBitForBitAndRefuseOthers() throws {
        var writer = StateWriter(version: 3)
        writer.integer(UInt32(7))
        writer.number(-0.0)
        writer.numbers([.pi, -.infinity])
        writer.floats([1.5, .leastNonzeroMagnitude, Float(bitPattern: 0x7fc0_1234)])
        writer.history([[1, 2], [], [3]])
        var reader = try StateReader(writer.bytes, version: 3)
        try reader.plan(7)
        #expect(try reader.number().bitPattern == (-0.0).bitPattern)
        #expect(try reader.numbers() == [.pi, -.infinity])
        #expect(try reader.floats().map(\.bitPattern) == [Float(1.5).bitPattern, Float.leastNonzeroMagnitude.bitPattern, 0x7fc0_1234])
        #expect(try reader.history() == [[1, 2], [], [3]])
        try reader.finish()

        #expect(throws: PluginError("sampler state version 3 is not known (4 is)")) { try StateReader(writer.bytes, version: 4) }
        var planned = try StateReader(writer.bytes, version: 3)
        #expect(throws: PluginError("sampler state is for a plan of 7, not 8")) { try planned.plan(8) }
        var truncated = try StateReader(Array(writer.bytes.prefix(30)), version: 3)
        try truncated.plan(7)
        _ = try truncated.number()
        #expect(throws: PluginError("sampler state of 30 bytes is truncated")) { try truncated.numbers() }
        var long = try StateReader(writer.bytes + [0], version: 3)
        try long.plan(7)
        #expect(throws: PluginError("sampler state has 73 bytes past its end")) { try long.finish() }
    }
}
