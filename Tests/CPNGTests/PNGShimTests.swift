import CPNG
import Foundation
import Testing

@Suite struct PNGShimTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("png-tests-\(UUID())").path

    init() throws { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }

    func write(_ path: String, _ pixels: [UInt8], width: UInt32, height: UInt32, channels: Int32) -> (Int32, String) {
        var error = [CChar](repeating: 0, count: 256)
        let keyNames: [String] = ["Software", "Parameters"], valueNames: [String] = ["diffusiond test", "seed 1"]
        let keys = keyNames.map { strdup($0)! }
        let values = valueNames.map { strdup($0)! }
        defer { (keys + values).forEach { free($0) } }
        var keyPointers: [UnsafePointer<CChar>?] = keys.map { UnsafePointer($0) }
        var valuePointers: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) }
        let status = dfn_png_write(path, pixels, width, height, channels, &keyPointers, &valuePointers, 2, 1, &error, 256)
        return (status, String(cString: error))
    }

    @Test(arguments: [Int32(1), 2, 3, 4])
    func roundTrips(channels: Int32) throws {
        let (width, height) = (UInt32(5), UInt32(3))
        let pixels = (0..<Int(width * height) * Int(channels)).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let path = "\(directory)/image-\(channels).png"
        #expect(write(path, pixels, width: width, height: height, channels: channels).0 == 0)

        var (w, h, c) = (UInt32(0), UInt32(0), Int32(0))
        var error = [CChar](repeating: 0, count: 256)
        #expect(dfn_png_read(path, nil, 0, &w, &h, &c, &error, 256) == 0)
        #expect((w, h, c) == (width, height, channels))
        var back = [UInt8](repeating: 0, count: pixels.count)
        #expect(dfn_png_read(path, &back, back.count, &w, &h, &c, &error, 256) == 0)
        #expect(back == pixels)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(bytes.range(of: Data("tEXtParameters\0seed 1".utf8)) != nil)
        #expect(bytes.range(of: Data("iTXtSoftware\0\0\0\0\0diffusiond test".utf8)) != nil)
    }

    @Test func errorsComeBackAsMessages() {
        let (status, message) = write("\(directory)/missing/dir/x.png", [0], width: 1, height: 1, channels: 1)
        #expect(status == -1 && message.contains("cannot create"))
        #expect(write("\(directory)/x.png", [0, 0, 0, 0, 0], width: 1, height: 1, channels: 5).1.contains("1 to 4 channels"))

        let notPNG = "\(directory)/not.png"
        FileManager.default.createFile(atPath: notPNG, contents: Data("definitely not a png".utf8))
        var (w, h, c) = (UInt32(0), UInt32(0), Int32(0))
        var error = [CChar](repeating: 0, count: 256)
        #expect(dfn_png_read(notPNG, nil, 0, &w, &h, &c, &error, 256) == -1)
        #expect(String(cString: error).hasPrefix("libpng: "))
    }
}
