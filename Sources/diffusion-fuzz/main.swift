// diffusion-fuzz TARGET [libFuzzer options] [CORPUS ...]
//
// One of the parsers in `FuzzTargets` under libFuzzer when `make fuzz` built
// this program (with AddressSanitizer, coverage, and libFuzzer's driver linked
// in); in an ordinary build it runs each file given through the target once,
// which replays a corpus.
import DiffusionDaemon
import Foundation

typealias FuzzInput = @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
typealias FuzzDriver = @convention(c) (
    UnsafeMutablePointer<Int32>, UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>, FuzzInput
) -> Int32

guard CommandLine.arguments.count >= 2, FuzzTargets.names.contains(CommandLine.arguments[1]) else {
    FileHandle.standardError.write(Data("usage: diffusion-fuzz TARGET [libFuzzer options] [CORPUS ...]; targets: \(FuzzTargets.names.joined(separator: ", "))\n".utf8))
    exit(2)
}
nonisolated(unsafe) var target = CommandLine.arguments[1]

let input: FuzzInput = { bytes, count in
    _ = FuzzTargets.run(target, bytes.map { Data(bytes: $0, count: count) } ?? Data())
    return 0
}

// libFuzzer reads its own options and corpus directories; the target name is not one.
var arguments = [CommandLine.arguments[0]] + CommandLine.arguments.dropFirst(2)
if let symbol = dlsym(dlopen(nil, RTLD_NOW), "LLVMFuzzerRunDriver") {
    var argc = Int32(arguments.count)
    var cStrings: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    let status = cStrings.withUnsafeMutableBufferPointer { buffer -> Int32 in
        var argv = Optional(buffer.baseAddress!)
        return unsafeBitCast(symbol, to: FuzzDriver.self)(&argc, &argv, input)
    }
    exit(status)
}
var ran = 0
for path in arguments.dropFirst() {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
    let files = isDirectory.boolValue
        ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { "\(path)/\($0)" } : [path]
    for file in files {
        guard let data = FileManager.default.contents(atPath: file) else { continue }
        _ = FuzzTargets.run(target, data)
        ran += 1
    }
}
print("\(target): \(ran) inputs ran without a crash")
