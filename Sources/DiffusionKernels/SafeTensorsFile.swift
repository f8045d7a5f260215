import DiffusionKernels
import Foundation

/// A `.safetensors` file, memory-mapped: an 8-byte little-endian header length, a
/// JSON header `{name: {dtype, shape, data_offsets}}`, then the raw tensor bytes.
///
/// Every offset and size is checked against the file before a byte is read, so a
/// damaged or hostile file is an error, never a crash. F32, F16 and BF16 tensors
/// are converted to float32 when loaded.
public final class SafeTensorsFile: @unchecked Sendable {
    public struct Entry: Sendable {
        public let dtype: DType
        public let shape: [Int]
        /// Byte range inside the data section.
        public let range: Range<Int>
    }

    public enum DType: String, Sendable {
        case f32 = "F32", f16 = "F16", bf16 = "BF16"

        var size: Int { self == .f32 ? 4 : 2 }
    }

    public let path: String
    public let entries: [String: Entry]
    public let metadata: [String: String]
    private let mapping: UnsafeRawBufferPointer
    private let dataStart: Int

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DiffusionError(path: path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw DiffusionError(path: path, "not a regular file")
        }
        let size = Int(info.st_size)
        guard size >= 8 else { throw DiffusionError(path: path, "file of \(size) bytes is too short for a safetensors header") }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw DiffusionError(path: path, "cannot map: \(String(cString: strerror(errno)))")
        }
        mapping = UnsafeRawBufferPointer(start: base, count: size)
        do {
            (entries, metadata, dataStart) = try Self.parseHeader(mapping, path: path)
        } catch {
            munmap(base, size)
            throw error
        }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: mapping.baseAddress), mapping.count) }

    /// The tensor `name` as float32, or nil when the file has no such tensor.
    public func tensor(_ name: String) -> Tensor? {
        guard let entry = entries[name] else { return nil }
        let tensor = Tensor(uninitialized: entry.shape)
        let bytes = UnsafeRawBufferPointer(rebasing: mapping[(dataStart + entry.range.lowerBound)...])
        switch entry.dtype {
        case .f32:
            for i in 0..<tensor.count { tensor.data[i] = bytes.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
        case .f16:
            for i in 0..<tensor.count {
                tensor.data[i] = Float(Float16(bitPattern: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
            }
        case .bf16:
            for i in 0..<tensor.count {
                let bits = UInt32(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16
                tensor.data[i] = Float(bitPattern: bits)
            }
        }
        return tensor
    }

    private static func parseHeader(_ file: UnsafeRawBufferPointer, path: String) throws
        -> (entries: [String: Entry], metadata: [String: String], dataStart: Int)
    {
        let headerLength = UInt64(littleEndian: file.loadUnaligned(as: UInt64.self))
        guard headerLength <= UInt64(file.count - 8) else {
            throw DiffusionError(path: path, "header of \(headerLength) bytes runs past the end of a \(file.count)-byte file")
        }
        let dataStart = 8 + Int(headerLength)
        let dataSize = file.count - dataStart
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(file[8..<dataStart]))
        } catch {
            throw DiffusionError(path: path, "header is not valid JSON")
        }
        guard let header = json as? [String: Any] else { throw DiffusionError(path: path, "header is not a JSON object") }
        var entries: [String: Entry] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                metadata = (value as? [String: String]) ?? [:]
                continue
            }
            guard let fields = value as? [String: Any],
                  let dtypeName = fields["dtype"] as? String,
                  let shape = (fields["shape"] as? [Any])?.map({ ($0 as? NSNumber)?.intValue ?? -1 }),
                  let offsets = (fields["data_offsets"] as? [Any])?.map({ ($0 as? NSNumber)?.intValue ?? -1 }),
                  offsets.count == 2
            else { throw DiffusionError(path: path, "tensor \(name): entry needs dtype, shape and two data_offsets") }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw DiffusionError(path: path, "tensor \(name): dtype \(dtypeName) is not supported (F32, F16, BF16 are)")
            }
            guard shape.allSatisfy({ $0 >= 0 && $0 < 1 << 32 }) else {
                throw DiffusionError(path: path, "tensor \(name): invalid shape \(shape)")
            }
            let (count, overflow) = shape.reduce((1, false)) { acc, d in
                let (product, o) = acc.0.multipliedReportingOverflow(by: d)
                return (product, acc.1 || o)
            }
            guard !overflow, offsets[0] >= 0, offsets[0] <= offsets[1], offsets[1] <= dataSize else {
                throw DiffusionError(path: path, "tensor \(name): data_offsets \(offsets) outside the \(dataSize)-byte data section")
            }
            guard offsets[1] - offsets[0] == count * dtype.size else {
                throw DiffusionError(path: path, "tensor \(name): \(offsets[1] - offsets[0]) bytes for shape \(shape) of \(dtypeName)")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, range: offsets[0]..<offsets[1])
        }
        return (entries, metadata, dataStart)
    }
}
