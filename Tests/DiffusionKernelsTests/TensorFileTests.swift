import DiffusionKernels
import Foundation
import Testing

@Suite struct TensorFileTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("diffusion-tests-\(UUID())").path

    init() throws { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }

    /// A safetensors file with the given header and data bytes.
    func safetensors(_ header: String, data: [UInt8], name: String = "t.safetensors", length: UInt64? = nil) -> String {
        let json = Array(header.utf8)
        var bytes = withUnsafeBytes(of: (length ?? UInt64(json.count)).littleEndian, Array.init)
        bytes += json + data
        let path = "\(directory)/\(name)"
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    @Test func readsF32F16AndBF16() throws {
        // 1.5 as F32 0x3FC00000, as F16 0x3E00, as BF16 0x3FC0; -2 as F16 0xC000, BF16 0xC000.
        let path = safetensors(
            #"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"# +
            #""h":{"dtype":"F16","shape":[2],"data_offsets":[4,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}"#,
            data: [0, 0, 0xC0, 0x3F, 0x00, 0x3E, 0x00, 0xC0, 0xC0, 0x3F, 0x00, 0xC0])
        let file = try SafeTensorsFile(path: path)
        #expect(file.metadata == ["format": "pt"])
        #expect(file.tensor("a")?.scalars == [1.5])
        #expect(file.tensor("h")?.scalars == [1.5, -2])
        #expect(file.tensor("b")?.shape == [1, 2])
        #expect(file.tensor("b")?.scalars == [1.5, -2])
        #expect(file.tensor("missing") == nil)
    }

    @Test(arguments: [
        ("short", "too short"),
        ("length", "runs past the end"),
        ("json", "not valid JSON"),
        ("dtype", "dtype I64 is not supported"),
        ("offsets", "outside the"),
        ("size", "bytes for shape"),
        ("entry", "needs dtype, shape and two data_offsets"),
    ])
    func rejectsDamagedFiles(kind: String, message: String) {
        let path: String
        switch kind {
        case "short": path = safetensors("", data: [], length: 0).replacingOccurrences(of: "t.s", with: "short.s")
        case "length": path = safetensors("{}", data: [], length: 1 << 40)
        case "json": path = safetensors("{nope", data: [])
        case "dtype": path = safetensors(#"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8))
        case "offsets": path = safetensors(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,400]}}"#, data: [0, 0, 0, 0])
        case "size": path = safetensors(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])
        default: path = safetensors(#"{"a":{"dtype":"F32"}}"#, data: [])
        }
        if kind == "short" { FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3])) }
        #expect {
            _ = try SafeTensorsFile(path: path)
        } throws: { error in
            String(describing: error).contains(message)
        }
    }

    @Test func npyRoundTripsAndRejectsOtherDtypes() throws {
        let tensor = Tensor(shape: [2, 3], scalars: [1, -2, 3.5, 0, 1e-8, 7])
        let path = "\(directory)/x.npy"
        try NPYFile.write(tensor, path: path)
        let back = try NPYFile.read(path: path)
        #expect(back.isBitIdentical(to: tensor))
        #expect(try NPYFile.decode(NPYFile.encode(Tensor(shape: [4], scalars: [1, 2, 3, 4]))).shape == [4])

        var header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }"
        header += String(repeating: " ", count: 63 - (10 + header.utf8.count) % 64) + "\n"
        let float64 = Data([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count), 0] + Array(header.utf8) + Array(repeating: 0, count: 8))
        #expect(throws: DiffusionError.self) { try NPYFile.decode(float64) }
        #expect(throws: DiffusionError.self) { try NPYFile.decode(Data("not numpy".utf8)) }
        #expect(throws: DiffusionError.self) { try NPYFile.decode(NPYFile.encode(tensor).dropLast(4)) }

        // Shapes the header claims are checked against the data before anything is allocated.
        func npy(shape: String, dataBytes: Int) -> Data {
            var header = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shape), }"
            header += String(repeating: " ", count: 63 - (10 + header.utf8.count) % 64) + "\n"
            return Data([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count), 0] + Array(header.utf8) + Array(repeating: 0, count: dataBytes))
        }
        #expect(throws: DiffusionError(path: "<data>", "8 data bytes for shape [55555552, 28, 116] of float32")) {
            try NPYFile.decode(npy(shape: "(55555552, 28, 116)", dataBytes: 8))
        }
        #expect(throws: DiffusionError(path: "<data>", "shape [4611686018427387904, 4] is too large")) {
            try NPYFile.decode(npy(shape: "(4611686018427387904, 4)", dataBytes: 8))
        }
        #expect(throws: DiffusionError(path: "<data>", "invalid shape (2,28, , 116)")) { try NPYFile.decode(npy(shape: "(2,28, , 116)", dataBytes: 8)) }
        #expect(try NPYFile.decode(npy(shape: "(2,)", dataBytes: 8)).shape == [2])
        #expect(try NPYFile.decode(npy(shape: "()", dataBytes: 4)).shape == [])
    }

    @Test func philoxMatchesPublishedVectors() {
        // Known-answer vectors of Random123's kat_vectors for philox4x32-10.
        #expect(Philox.block(counter: (0, 0, 0, 0), key: (0, 0)) == (0x6627_E8D5, 0xE169_C58D, 0xBC57_AC4C, 0x9B00_DBD8))
        #expect(Philox.block(counter: (~0, ~0, ~0, ~0), key: (~0, ~0)) == (0x408F_276D, 0x41C8_3B0E, 0xA20B_C7C6, 0x6D54_51FD))
        #expect(Philox.block(counter: (0x243F_6A88, 0x85A3_08D3, 0x1319_8A2E, 0x0370_7344), key: (0xA409_3822, 0x299F_31D0))
            == (0xD16C_FE09, 0x94FD_CCEB, 0x5001_E420, 0x2412_6EA1))
        var a = Philox(seed: 42)
        let first = (0..<1000).map { _ in a.nextNormal() }
        let mean = first.reduce(0, +) / 1000
        #expect(abs(mean) < 0.1)
        var b = Philox(seed: 42)
        #expect((0..<1000).map { _ in b.nextNormal() } == first)
    }

    @Test func aGeneratorRebuiltFromItsStateContinuesExactly() throws {
        var a = Philox(seed: 7)
        for skip in [0, 1, 2, 3, 5] {
            for _ in 0..<skip { _ = a.next() }
            var b = try #require(Philox(state: a.state))
            #expect((0..<9).map { _ in b.next() } == (0..<9).map { _ in a.next() })
        }
        #expect(Philox(state: [1, 2, 3]) == nil)
    }
}
