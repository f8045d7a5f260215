import DiffusionKernels
import Foundation

/// NumPy's `.npy` format for float32 tensors in C order: the magic `\x93NUMPY`, a
/// version, a header length, a Python-literal header dict, then the data.
public enum NPYFile {
    private static let magic: [UInt8] = [0x93] + Array("NUMPY".utf8)

    /// Parses `.npy` bytes; `path` only names the source in errors.
    public static func decode(_ bytes: Data, path: String = "<data>") throws -> Tensor {
        let b = [UInt8](bytes)
        guard b.count >= 10, Array(b[0..<6]) == magic else { throw DiffusionError(path: path, "not an .npy file") }
        let major = b[6]
        let (lengthSize, headerStart): (Int, Int) = major == 1 ? (2, 10) : (4, 12)
        guard (1...3).contains(major), b.count >= headerStart else {
            throw DiffusionError(path: path, ".npy version \(major) is not supported")
        }
        var headerLength = 0
        for i in 0..<lengthSize { headerLength |= Int(b[8 + i]) << (8 * i) }
        guard headerStart + headerLength <= b.count,
              let header = String(bytes: b[headerStart..<(headerStart + headerLength)], encoding: .utf8)
        else { throw DiffusionError(path: path, ".npy header runs past the end of the file") }

        let descr = field("descr", in: header)
        guard descr == "'<f4'" || descr == "'|f4'" else {
            throw DiffusionError(path: path, "dtype \(descr ?? "missing") is not float32 ('<f4')")
        }
        guard field("fortran_order", in: header) == "False" else {
            throw DiffusionError(path: path, "only C-order arrays are read (fortran_order must be False)")
        }
        guard let shapeText = field("shape", in: header), shapeText.hasPrefix("("), shapeText.hasSuffix(")") else {
            throw DiffusionError(path: path, ".npy header has no shape")
        }
        // "(2, 3)", "(4,)" or "()": numbers separated by commas, one trailing comma allowed.
        var parts = shapeText.dropFirst().dropLast().split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        if parts.count > 1, parts.last == "" { parts.removeLast() }
        if parts == [""] { parts = [] }
        let shape = try parts.map { part -> Int in
            guard let dimension = Int(part), dimension >= 0 else { throw DiffusionError(path: path, "invalid shape \(shapeText)") }
            return dimension
        }
        // The data must be there before anything is allocated for it (a header
        // may claim any shape: found by `make fuzz`).
        let dataStart = headerStart + headerLength
        var bytes = 4
        for dimension in shape {
            let (product, overflow) = bytes.multipliedReportingOverflow(by: dimension)
            guard !overflow else { throw DiffusionError(path: path, "shape \(shape) is too large") }
            bytes = product
        }
        guard b.count - dataStart == bytes else {
            throw DiffusionError(path: path, "\(b.count - dataStart) data bytes for shape \(shape) of float32")
        }
        let tensor = Tensor(uninitialized: shape)
        b.withUnsafeBytes { raw in
            for i in 0..<tensor.count {
                tensor.data[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: dataStart + 4 * i, as: UInt32.self)))
            }
        }
        return tensor
    }

    public static func read(path: String) throws -> Tensor {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DiffusionError(path: path, "cannot read file")
        }
        return try decode(data, path: path)
    }

    /// Version 1.0 `.npy` bytes, the header padded so the data starts 64-byte aligned.
    public static func encode(_ tensor: Tensor) -> Data {
        let shape = tensor.shape.count == 1 ? "(\(tensor.shape[0]),)" : "(" + tensor.shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shape), }"
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var data = Data(magic + [1, 0, UInt8(header.utf8.count & 0xff), UInt8(header.utf8.count >> 8)])
        data.append(contentsOf: Array(header.utf8))
        data.reserveCapacity(data.count + tensor.count * 4)
        for i in 0..<tensor.count { withUnsafeBytes(of: tensor.data[i].bitPattern.littleEndian) { data.append(contentsOf: $0) } }
        return data
    }

    public static func write(_ tensor: Tensor, path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: encode(tensor)) else {
            throw DiffusionError(path: path, "cannot write file")
        }
    }

    /// The literal after `'key':` in a header dict, up to the next top-level comma.
    private static func field(_ key: String, in header: String) -> String? {
        guard let start = header.range(of: "'\(key)':") else { return nil }
        var depth = 0
        var value = ""
        for character in header[start.upperBound...] {
            if character == "(" { depth += 1 }
            if character == ")" { depth -= 1 }
            if (character == "," && depth == 0) || character == "}" { break }
            value.append(character)
        }
        return value.trimmingCharacters(in: .whitespaces)
    }
}
