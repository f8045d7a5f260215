import CPNG
import DiffusionKernels
import DiffusionModels
import Foundation

/// The files a finished render leaves in its output directory:
/// `image-NNNN.png` (8-bit, pixel = round(clamp((x − low)/(high − low), 0, 1)·255)
/// over the model's sample range: −1...1, or 0...1 for score models; with an iTXt
/// chunk `diffusiond` holding the resolved job, the image's own seed, the model's
/// content hash and the program version), `grid.png` (about √count columns),
/// `job.json` (the resolved job, prompts included), with format `npy`
/// `samples.npy` (the final images, float32 `[count, C, H, W]`, unclamped: for a
/// latent model the decoder's output) and with format `latents` `latents.npy`
/// (a latent model's final latents); with format `stages`, a cascade's earlier
/// stages' images and samples.npy in `stage-K/`.
public enum RenderOutput {
    public static let programVersion = "0.1.0"

    public static func write(_ cascade: CascadeRender, to directory: String) throws {
        let render = cascade.current
        let job = cascade.plan.resolvedJob
        let formats = render.job.formats
        try writeImages(try render.images(of: render.sample), to: directory, model: render.model,
                        range: render.model.description.sampleRange, seeds: render.seeds, job: job,
                        columns: render.job.gridColumns, png: formats.contains(.png), npy: formats.contains(.npy),
                        parameters: { parameters(render, image: $0) })
        if cascade.job.formats.contains(.stages) {
            for (index, images) in cascade.stageImages.enumerated() {
                let stage = cascade.plan.stages[index]
                try writeImages(images, to: "\(directory)/stage-\(index + 1)", model: nil, range: stage.model.sampleRange,
                                seeds: stage.seeds, job: job, columns: stage.job.gridColumns, png: true, npy: true,
                                parameters: nil)
            }
        }
        if formats.contains(.latents) {
            try NPYFile.write(render.sample, path: "\(directory)/latents.npy")
        }
        guard FileManager.default.createFile(atPath: "\(directory)/job.json", contents: Data((try json(job) + "\n").utf8)) else {
            throw DiffusionError.system("cannot write \(directory)/job.json")
        }
    }

    /// One stage's images into `directory`: each PNG with the job, its seed and
    /// (for the final images) the model's hash and the A1111 parameters; the
    /// grid; samples.npy.
    private static func writeImages(_ samples: Tensor, to directory: String, model: LoadedModel?, range: ClosedRange<Float>,
                                    seeds: [UInt64], job: [String: Any], columns: Int?, png: Bool, npy: Bool,
                                    parameters: ((Int) -> String)?) throws
    {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw DiffusionError("cannot create output directory \(directory): \(error.localizedDescription)")
        }
        let (count, channels, height, width) = (samples.shape[0], samples.shape[1], samples.shape[2], samples.shape[3])
        if png {
            for image in 0..<count {
                var metadata = job
                metadata["seed"] = NSNumber(value: seeds[image])
                var text: [String: Any] = ["job": metadata, "image": image, "program": "diffusiond \(programVersion)"]
                text["model_hash"] = model?.contentHash
                try PNGFile.write(path: String(format: "%@/image-%04d.png", directory, image),
                                  pixels: pixels(samples, images: image..<(image + 1), columns: 1, range: range),
                                  width: width, height: height, channels: channels,
                                  text: ["diffusiond": try json(text)],
                                  latinText: parameters.map { ["parameters": $0(image)] } ?? [:])
            }
            try writeGrid(samples, columns: columns, range: range, to: "\(directory)/grid.png")
        }
        if npy {
            try NPYFile.write(samples, path: "\(directory)/samples.npy")
        }
    }

    /// Every image of `samples` in one PNG, `columns` wide (default ⌈√count⌉).
    /// grid.png, and the daemon's previews of x̂₀, are this.
    public static func writeGrid(_ samples: Tensor, columns: Int?, range: ClosedRange<Float>, to path: String) throws {
        let (count, channels, height, width) = (samples.shape[0], samples.shape[1], samples.shape[2], samples.shape[3])
        let columns = min(columns ?? Int(Double(count).squareRoot().rounded(.up)), count)
        let rows = (count + columns - 1) / columns
        try PNGFile.write(path: path, pixels: pixels(samples, images: 0..<count, columns: columns, range: range),
                          width: width * columns, height: height * rows, channels: channels, text: [:])
    }

    /// Image `image`'s generation parameters as AUTOMATIC1111 writes them, so the
    /// tools people read them with show them: the prompt, "Negative prompt: ...",
    /// then "Steps: 50, Sampler: DDIM, CFG scale: 3.0, Seed: 123, Size: 28x28,
    /// Model hash: 0123456789, Model: NAME" (the guidance as "CFG scale" or
    /// "Classifier scale", the label as "Class"; the hash is the first ten digits
    /// of the model's content hash).
    static func parameters(_ render: Render, image: Int) -> String {
        let job = render.job
        let size = render.plan.resolvedJob
        var fields = ["Steps: \(render.totalSteps)", "Sampler: \(render.plan.samplerName.uppercased())"]
        if let kind = render.plan.guidanceKind {
            // A scale neither the job nor the model gives is the plugins' default, 1.
            let scale = render.plan.guidanceOptions["scale"] as? NSNumber
            let name = kind == "cfg" ? "CFG scale" : "\(kind.prefix(1).uppercased())\(kind.dropFirst()) scale"
            fields.append("\(name): \(scale.map { String(format: "%.1f", $0.doubleValue) } ?? "1.0")")
        }
        if let classes = job.classes { fields.append("Class: \(classes[image])") }
        let hash = render.model.contentHash.split(separator: ":").last.map { String($0.prefix(10)) } ?? ""
        fields += ["Seed: \(render.seeds[image])", "Size: \(size["width"]!)x\(size["height"]!)", "Model hash: \(hash)",
                   "Model: \(job.model)"]
        var lines: [String] = []
        if let prompts = render.plan.prompts {
            lines.append(prompts[image])
            if let negative = render.plan.negativePrompts?[image], !negative.isEmpty { lines.append("Negative prompt: \(negative)") }
        }
        // tEXt holds Latin-1: a prompt's other characters are written as "?"
        let text = (lines + [fields.joined(separator: ", ")]).joined(separator: "\n")
        return String(text.unicodeScalars.map { $0.value < 256 ? Character($0) : "?" })
    }

    static func json(_ object: Any) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
    }

    /// 8-bit interleaved pixels of `images` laid out `columns` wide (unused cells black).
    /// `range` (the model's sample range) maps onto 0...255.
    static func pixels(_ samples: Tensor, images: Range<Int>, columns: Int, range: ClosedRange<Float>) -> [UInt8] {
        let (low, span) = (range.lowerBound, range.upperBound - range.lowerBound)
        let (channels, height, width) = (samples.shape[1], samples.shape[2], samples.shape[3])
        let rows = (images.count + columns - 1) / columns
        let stride = width * columns * channels
        var out = [UInt8](repeating: 0, count: stride * height * rows)
        for (slot, image) in images.enumerated() {
            let (gridRow, gridColumn) = (slot / columns, slot % columns)
            let base = samples.data + image * samples.sliceCount
            for c in 0..<channels { for y in 0..<height { for x in 0..<width {
                let value = base[(c * height + y) * width + x]
                // NaN (which no finished render holds) is black rather than a trap.
                let level = value.isNaN ? 0 : ((min(max((value - low) / span, 0), 1)) * 255).rounded()
                out[(gridRow * height + y) * stride + (gridColumn * width + x) * channels + c] = UInt8(level)
            } } }
        }
        return out
    }
}

/// PNG files through the CPNG shim.
public enum PNGFile {
    /// `text` goes into iTXt chunks (UTF-8), `latinText` into tEXt chunks.
    public static func write(path: String, pixels: [UInt8], width: Int, height: Int, channels: Int,
                             text: [String: String], latinText: [String: String] = [:]) throws
    {
        let entries = text.sorted { $0.key < $1.key } + latinText.sorted { $0.key < $1.key }
        let cKeys = entries.map { strdup($0.key)! }, cValues = entries.map { strdup($0.value)! }
        defer { (cKeys + cValues).forEach { free($0) } }
        var keyPointers: [UnsafePointer<CChar>?] = cKeys.map { UnsafePointer($0) }
        var valuePointers: [UnsafePointer<CChar>?] = cValues.map { UnsafePointer($0) }
        var error = [CChar](repeating: 0, count: 512)
        let status = dfn_png_write(path, pixels, UInt32(width), UInt32(height), Int32(channels), &keyPointers,
                                   &valuePointers, Int32(entries.count), Int32(text.count), &error, error.count)
        // errno is still the failing call's (fopen, fwrite): a full disk is known by its number.
        let code = errno
        guard status == 0 else {
            throw DiffusionError(String(decoding: error.prefix { $0 != 0 }.map(UInt8.init), as: UTF8.self), errno: code)
        }
    }
}

extension PNGFile {
    /// An 8-bit PNG's interleaved samples, from a file or from its bytes.
    public struct Image {
        public let pixels: [UInt8]
        public let width: Int
        public let height: Int
        public let channels: Int
    }

    public static func read(path: String) throws -> Image {
        try read(label: path) { pixels, capacity, width, height, channels, error, size in
            dfn_png_read(path, pixels, capacity, width, height, channels, error, size)
        }
    }

    public static func read(data: Data) throws -> Image {
        try data.withUnsafeBytes { bytes in
            try read(label: "PNG data") { pixels, capacity, width, height, channels, error, size in
                dfn_png_read_memory(bytes.bindMemory(to: UInt8.self).baseAddress, bytes.count, pixels, capacity, width, height,
                                    channels, error, size)
            }
        }
    }

    private static func read(
        label: String,
        _ call: (UnsafeMutablePointer<UInt8>?, Int, UnsafeMutablePointer<UInt32>, UnsafeMutablePointer<UInt32>,
                 UnsafeMutablePointer<Int32>, UnsafeMutablePointer<CChar>, Int) -> Int32
    ) throws -> Image {
        var (width, height, channels): (UInt32, UInt32, Int32) = (0, 0, 0)
        var error = [CChar](repeating: 0, count: 512)
        func failure() -> DiffusionError {
            DiffusionError("\(label): \(String(decoding: error.prefix { $0 != 0 }.map(UInt8.init), as: UTF8.self))")
        }
        guard call(nil, 0, &width, &height, &channels, &error, error.count) == 0 else { throw failure() }
        guard width > 0, height > 0, Int(width) * Int(height) <= 1 << 26 else {
            throw DiffusionError("\(label): a \(width)x\(height) image is too large to read")
        }
        var pixels = [UInt8](repeating: 0, count: Int(width) * Int(height) * Int(channels))
        guard call(&pixels, pixels.count, &width, &height, &channels, &error, error.count) == 0 else { throw failure() }
        return Image(pixels: pixels, width: Int(width), height: Int(height), channels: Int(channels))
    }
}
