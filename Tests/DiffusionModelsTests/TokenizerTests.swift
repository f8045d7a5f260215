import DiffusionModels
import Foundation
import Testing

/// CLIPTokenizer against transformers' ids for 320 prompts (punctuation, digits,
/// non-ASCII text, apostrophes, runs of whitespace, special tokens' text, prompts
/// over 77 tokens), padded as SD 1.x (`<|endoftext|>`) and SD 2.x (`!`) pad.
@Suite struct TokenizerTests {
    struct Cases: Decodable {
        struct Case: Decodable { let prompt: String; let sd1: [Int]; let sd2: [Int] }
        let made_with: String
        let cases: [Case]
    }

    @Test(arguments: ["sd1", "sd2"])
    func idsEqualTransformers(_ variant: String) throws {
        let file = try JSONDecoder().decode(
            Cases.self, from: Data(contentsOf: URL(fileURLWithPath: "\(LatentFixtures.root)/tokenizer-cases.json")))
        #expect(file.cases.count >= 300)
        let tokenizer = try CLIPTokenizer(directory: "\(LatentFixtures.root)/\(variant)-tiny/tokenizer")
        var mismatches = 0
        for item in file.cases {
            let expected = variant == "sd1" ? item.sd1 : item.sd2
            let ids = tokenizer.encode(item.prompt)
            if ids != expected {
                mismatches += 1
                if mismatches <= 5 { Issue.record("\(variant) \(item.prompt.debugDescription): \(ids) != transformers \(expected)") }
            }
        }
        print("tokenizer \(variant): \(file.cases.count - mismatches)/\(file.cases.count) prompts equal (\(file.made_with))")
        #expect(mismatches == 0)
    }

    @Test func refusesADirectoryWithoutMerges() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try Data("{\"a</w>\": 0}".utf8).write(to: directory.appendingPathComponent("vocab.json"))
        #expect(throws: (any Error).self) { try CLIPTokenizer(directory: directory.path) }
    }
}
