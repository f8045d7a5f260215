import DiffusionDaemon
import Foundation
import Testing

/// Every input in Tests/Fuzz (the seed corpora of `make fuzz`, and each input
/// that ever crashed a parser) goes through its parser again on every test run.
@Suite struct FuzzCorpusTests {
    @Test(arguments: FuzzTargets.names)
    func theCorpusStillParses(target: String) throws {
        let directory = "\(DaemonProcess.packageRoot)/Tests/Fuzz/\(target)"
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        #expect(!files.isEmpty, "no seed inputs for \(target)")
        for file in files {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(file)"))
            #expect(FuzzTargets.run(target, data))
        }
    }

    @Test func framingSplitsLinesAndSkipsOversizeOnes() {
        var framer = LineFramer(maxLineBytes: 4)
        var lines: [String] = []
        var oversize = 0
        for piece in ["ab\ncdefgh", "ij\n  \nk", "l\n"] {
            Data(piece.utf8).withUnsafeBytes {
                framer.feed($0, handle: { lines.append(String(decoding: $0, as: UTF8.self)) }, oversize: { oversize += 1 })
            }
        }
        #expect(lines == ["ab", "kl"] && oversize == 1 && framer.bufferedBytes == 0)
    }
}
