import DiffusionKernels
import Foundation

/// A render job, the one schema of docs/jobs.md, parsed strictly: every key has
/// a type and a default, and an unknown key is an error, never ignored.
public struct Job: Sendable {
    public enum Format: String, Sendable, CaseIterable { case png, npy, latents, stages }

    public var model: String
    /// nil: the sampler the model's scheduler config names.
    public var sampler: String?
    public var samplerOptions: [String: JSONValue] = [:]
    public var betaSchedule: String?
    public var timestepSpacing: String?
    public var steps = 50
    /// One seed per image (derived from a single seed, or given as a list); nil: random.
    public var seeds: [UInt64]?
    public var count = 1
    /// One label per image; nil: the model's null label (unconditional).
    public var classes: [Int]?
    /// One prompt per image, for text-conditioned models; and the prompts the
    /// unconditional pass of CFG reads (nil: the empty prompt, as diffusers).
    public var prompts: [String]?
    public var negativePrompts: [String]?
    /// The image size in pixels; nil: the model's own (its U-Net's sample_size,
    /// times the autoencoder's factor for a latent model).
    public var width: Int?
    public var height: Int?
    /// Image-to-image: the starting image (a PNG: a path for `render`, its bytes
    /// inline for the daemon) and how much of the schedule re-draws it (0 < s ≤ 1).
    public var initImage: InitImage?
    public var strength: Double?

    public enum InitImage: Sendable, Equatable {
        case path(String)
        case inline(Data)
    }

    /// Super-resolution: the low-resolution image a first stage of an SR model
    /// upscales (a PNG, as `init_image`), and the augmentation level it is
    /// noised to (nil: the model's `noise_level`).
    public var image: InitImage?
    public var noiseLevel: Int?
    /// The cascade's later stages, each a partial job (`stageKeys`) with the
    /// job's count and formats, conditioned on the stage before; nil prompts
    /// are the job's.
    public var stages: [Job] = []

    /// The keys a stage may carry.
    public static let stageKeys: Set<String> = [
        "model", "sampler", "sampler_options", "beta_schedule", "timestep_spacing", "steps", "guidance", "noise_level",
        "prompt", "negative_prompt", "width", "height",
    ]

    /// diffusers' StableDiffusionImg2ImgPipeline default.
    public static let defaultStrength = 0.8
    public var guidance: Guidance?
    /// A float32 `[count, C, H, W]` .npy used as x_T: a path (`diffusiond render`,
    /// relative to the job file) or the file's bytes (sent inline to the daemon).
    public var initNoise: InitNoise?
    public var formats: [Format] = [.png]
    /// Columns of grid.png; nil: ⌈√count⌉.
    public var gridColumns: Int?
    /// Daemon keys: queue priority (higher first), preview interval in steps (0 = off),
    /// time limit in seconds (0 = the daemon's default).
    public var priority = 0
    public var previewEvery = 0
    public var timeLimit = 0.0

    public struct Guidance: Sendable, Equatable {
        public var kind: String
        public var options: [String: JSONValue]
    }

    public enum InitNoise: Sendable, Equatable {
        case path(String)
        case inline(Data)
    }

    public static let keys: Set<String> = [
        "model", "sampler", "sampler_options", "beta_schedule", "timestep_spacing", "steps", "seed", "count", "class",
        "guidance", "init_noise", "formats", "grid_columns", "priority", "preview_every", "time_limit",
        "prompt", "negative_prompt", "width", "height", "init_image", "strength", "image", "noise_level", "stages",
    ]

    public init(model: String) { self.model = model }

    /// Parses a job; `source` names it in errors.
    public init(json data: Data, source: String) throws {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw DiffusionError("\(source): not valid JSON")
        }
        guard let keys = object as? [String: Any] else { throw DiffusionError("\(source): a job is a JSON object") }
        if let unknown = keys.keys.sorted().first(where: { !Self.keys.contains($0) }) {
            throw DiffusionError("\(source): unknown key \"\(unknown)\" (see docs/jobs.md)")
        }
        func fail(_ key: String, _ what: String) -> DiffusionError { DiffusionError("\(source): \(key) must be \(what)") }
        func value(_ key: String) -> Any? { keys[key].flatMap { $0 is NSNull ? nil : $0 } }
        func string(_ key: String) throws -> String? {
            guard let raw = value(key) else { return nil }
            guard let text = raw as? String, !text.isEmpty else { throw fail(key, "a non-empty string") }
            return text
        }
        func integer(_ raw: Any, _ key: String, _ range: ClosedRange<Int>) throws -> Int {
            guard let number = raw as? NSNumber, !PluginHost.isBool(number), let exact = Self.exactInteger(number),
                  range.contains(exact)
            else { throw fail(key, "a whole number in \(range.lowerBound)...\(range.upperBound)") }
            return exact
        }

        guard let model = try string("model") else { throw DiffusionError("\(source): model is required") }
        self.model = model
        sampler = try string("sampler")
        if let raw = value("sampler_options") {
            guard let options = raw as? [String: Any] else { throw fail("sampler_options", "an object") }
            samplerOptions = try options.mapValues { try JSONValue($0) }
        }
        betaSchedule = try string("beta_schedule")
        timestepSpacing = try string("timestep_spacing")
        if let raw = value("steps") { steps = try integer(raw, "steps", 1...1_000_000) }
        if let raw = value("count") { count = try integer(raw, "count", 1...1_000_000) }
        if let raw = value("seed") {
            let maximum = Int(Int64.max)
            if let list = raw as? [Any] {
                seeds = try list.map { UInt64(try integer($0, "seed", 0...maximum)) }
                guard seeds!.count == count else { throw fail("seed", "one number or a list of count (\(count)) numbers") }
            } else {
                let seed = UInt64(try integer(raw, "seed", 0...maximum))
                seeds = (0..<count).map { Self.imageSeed(seed, $0) }
            }
        }
        if let raw = value("class") {
            if let list = raw as? [Any] {
                classes = try list.map { try integer($0, "class", 0...Int(Int32.max)) }
                guard classes!.count == count else { throw fail("class", "one label or a list of count (\(count)) labels") }
            } else {
                classes = [Int](repeating: try integer(raw, "class", 0...Int(Int32.max)), count: count)
            }
        }
        func promptList(_ key: String) throws -> [String]? {
            guard let raw = value(key) else { return nil }
            if let text = raw as? String { return [String](repeating: text, count: count) }
            guard let list = raw as? [String], list.count == count else {
                throw fail(key, "a string or a list of count (\(count)) strings")
            }
            return list
        }
        prompts = try promptList("prompt")
        negativePrompts = try promptList("negative_prompt")
        if let raw = value("width") { width = try integer(raw, "width", 1...65_536) }
        if let raw = value("height") { height = try integer(raw, "height", 1...65_536) }
        func png(_ key: String) throws -> InitImage? {
            guard let raw = value(key) else { return nil }
            if let path = raw as? String, !path.isEmpty { return .path(path) }
            guard let inline = raw as? [String: Any], inline.count == 1, let text = inline["png_base64"] as? String,
                  let bytes = Data(base64Encoded: text)
            else { throw fail(key, "a .png path or {\"png_base64\": \"...\"}") }
            return .inline(bytes)
        }
        initImage = try png("init_image")
        image = try png("image")
        if let raw = value("noise_level") { noiseLevel = try integer(raw, "noise_level", 0...100_000) }
        if let raw = value("stages") {
            guard let list = raw as? [Any], !list.isEmpty else { throw fail("stages", "a non-empty list of stage objects") }
            stages = try list.enumerated().map { index, item in
                let label = "\(source): stage \(index + 2)"
                guard var stage = item as? [String: Any] else { throw DiffusionError("\(label) must be an object") }
                if let unknown = stage.keys.sorted().first(where: { !Self.stageKeys.contains($0) }) {
                    throw DiffusionError("\(label): \"\(unknown)\" is not a stage key (a stage takes \(Self.stageKeys.sorted().joined(separator: ", ")))")
                }
                stage["count"] = count
                return try Job(json: try JSONSerialization.data(withJSONObject: stage), source: label)
            }
        }
        if let raw = value("strength") {
            guard let number = raw as? NSNumber, !PluginHost.isBool(number), number.doubleValue > 0, number.doubleValue <= 1 else {
                throw fail("strength", "a number in (0, 1]")
            }
            guard initImage != nil else { throw fail("strength", "given with an init_image only") }
            strength = number.doubleValue
        }
        if let raw = value("guidance") {
            guard var object = raw as? [String: Any], let kind = object.removeValue(forKey: "kind") as? String else {
                throw fail("guidance", "an object with a \"kind\" (cfg, classifier)")
            }
            guidance = Guidance(kind: kind, options: try object.mapValues { try JSONValue($0) })
        }
        if let raw = value("init_noise") {
            if let path = raw as? String, !path.isEmpty {
                initNoise = .path(path)
            } else if let inline = raw as? [String: Any], inline.count == 1, let text = inline["npy_base64"] as? String,
                      let bytes = Data(base64Encoded: text)
            {
                initNoise = .inline(bytes)
            } else {
                throw fail("init_noise", "a .npy path or {\"npy_base64\": \"...\"}")
            }
        }
        if let raw = value("formats") {
            let formatList = "a list of \"png\", \"npy\", \"latents\", \"stages\""
            guard let list = raw as? [String], !list.isEmpty else { throw fail("formats", formatList) }
            formats = try list.map { name in
                guard let format = Format(rawValue: name) else { throw fail("formats", formatList) }
                return format
            }
        }
        if let raw = value("grid_columns") { gridColumns = try integer(raw, "grid_columns", 1...1_000_000) }
        if let raw = value("priority") { priority = try integer(raw, "priority", -1000...1000) }
        if let raw = value("preview_every") { previewEvery = try integer(raw, "preview_every", 0...1_000_000) }
        if let raw = value("time_limit") {
            guard let number = raw as? NSNumber, !PluginHost.isBool(number), number.doubleValue >= 0 else {
                throw fail("time_limit", "a number of seconds, 0 or more")
            }
            timeLimit = number.doubleValue
        }
    }

    /// An inline `init_noise`'s tensor.
    public static func decodeInitNoise(_ bytes: Data) throws -> Tensor {
        do { return try NPYFile.decode(bytes, path: "init_noise") } catch { throw DiffusionError("init_noise: \(error)") }
    }

    /// A JSON number as an exact Int: integers as parsed (seeds exceed a double's
    /// 53 bits), doubles only when whole.
    static func exactInteger(_ number: NSNumber) -> Int? {
        switch String(cString: number.objCType) {
        case "d", "f": return Int(exactly: number.doubleValue)
        case "Q": return number.uint64Value <= UInt64(Int.max) ? Int(number.uint64Value) : nil
        default: return number.intValue
        }
    }

    /// Image `index`'s seed when a job gives one seed: SplitMix64 (Steele et al. 2014)
    /// of seed + (index + 1)·0x9E3779B97F4A7C15, cut to 63 bits. Giving that seed in a
    /// list of one reproduces the image.
    public static func imageSeed(_ seed: UInt64, _ index: Int) -> UInt64 {
        var z = seed &+ (UInt64(index) &+ 1) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return (z ^ (z >> 31)) & UInt64(Int64.max)
    }
}

/// A JSON value that is Sendable, for options carried inside a job.
public enum JSONValue: Sendable, Equatable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(_ raw: Any) throws {
        switch raw {
        case is NSNull: self = .null
        case let number as NSNumber where PluginHost.isBool(number): self = .bool(number.boolValue)
        case let number as NSNumber:
            guard number.doubleValue.isFinite else { throw DiffusionError("\(number) is not a finite number") }
            self = .number(number.doubleValue)
        case let text as String: self = .string(text)
        case let list as [Any]: self = .array(try list.map(JSONValue.init))
        case let object as [String: Any]: self = .object(try object.mapValues(JSONValue.init))
        default: throw DiffusionError("unsupported JSON value \(raw)")
        }
    }

    /// The Foundation form JSONSerialization reads and writes.
    public var foundation: Any {
        switch self {
        case .null: return NSNull()
        case .bool(let value): return NSNumber(value: value)
        case .number(let value): return value == value.rounded() && abs(value) < 1e15 ? NSNumber(value: Int(value)) : NSNumber(value: value)
        case .string(let value): return value
        case .array(let values): return values.map(\.foundation)
        case .object(let values): return values.mapValues(\.foundation)
        }
    }
}
