import DiffusionKernels
import Foundation

/// transformers' `CLIPTokenizer` from a `tokenizer/` directory as Stable Diffusion
/// publishes it (vocab.json, merges.txt, tokenizer_config.json,
/// special_tokens_map.json), giving the same ids:
///
/// 1. the special tokens (start, end, unknown, padding) are cut out of the raw
///    text wherever they occur, as tokenizers' added tokens are: SD 2.x pads with
///    `!`, so every `!` of a prompt is that token, never part of a BPE word;
/// 2. each remaining piece is normalised: NFC, every run of whitespace one space,
///    lower case (per code point, no final-sigma rule, as Rust's `to_lowercase`
///    on a char);
/// 3. split by CLIP's pattern — the contractions 's 't 're 've 'm 'll 'd, a run
///    of letters, one digit, a run of anything else but whitespace — and the
///    whitespace between is dropped;
/// 4. each word's UTF-8 bytes become GPT-2's byte symbols, the last with `</w>`,
///    and the lowest-ranked adjacent pair of merges.txt is merged (the leftmost
///    first) until no pair has a rank; a symbol outside the vocabulary is the
///    unknown token;
/// 5. `<|startoftext|>` + at most `model_max_length − 2` ids + `<|endoftext|>`,
///    padded to `model_max_length` with the padding token (diffusers' call:
///    padding "max_length", truncation).
public final class CLIPTokenizer: Sendable {
    public let maxLength: Int
    public let startToken: Int
    public let endToken: Int
    public let padToken: Int
    let unknownToken: Int
    let vocabulary: [String: Int]
    /// Merge ranks by pair, the pair's two symbols joined by a space.
    let ranks: [String: Int]
    /// The special tokens' texts, longest first, as they are cut out of a prompt.
    let specialTexts: [(text: [Unicode.Scalar], id: Int)]

    public init(directory: String) throws {
        func json(_ name: String) throws -> [String: Any]? {
            let path = "\(directory)/\(name)"
            guard let data = FileManager.default.contents(atPath: path) else { return nil }
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw DiffusionError("\(path): not a JSON object")
            }
            return object
        }
        guard let vocabulary = try json("vocab.json") as? [String: Int] else {
            throw DiffusionError("\(directory)/vocab.json: missing, or not an object of token ids (a CLIP tokenizer needs vocab.json and merges.txt)")
        }
        self.vocabulary = vocabulary
        guard let merges = FileManager.default.contents(atPath: "\(directory)/merges.txt").flatMap({ String(data: $0, encoding: .utf8) }) else {
            throw DiffusionError("\(directory)/merges.txt: cannot read (a CLIP tokenizer needs vocab.json and merges.txt)")
        }
        var ranks: [String: Int] = [:]
        for line in merges.split(separator: "\n", omittingEmptySubsequences: true) where !line.hasPrefix("#version") {
            let pair = line.split(separator: " ")
            guard pair.count == 2 else { throw DiffusionError("\(directory)/merges.txt: line \"\(line)\" is not two symbols") }
            if ranks["\(pair[0]) \(pair[1])"] == nil { ranks["\(pair[0]) \(pair[1])"] = ranks.count }
        }
        self.ranks = ranks
        // special_tokens_map.json over tokenizer_config.json, as transformers reads them
        let config = try json("tokenizer_config.json") ?? [:]
        let special = config.merging(try json("special_tokens_map.json") ?? [:]) { $1 }
        func token(_ key: String, default text: String) throws -> (String, Int) {
            var name = text
            if let value = special[key] as? String { name = value }
            if let value = special[key] as? [String: Any], let content = value["content"] as? String { name = content }
            guard let id = vocabulary[name] else {
                throw DiffusionError("\(directory): \(key) \"\(name)\" is not in vocab.json")
            }
            return (name, id)
        }
        let start = try token("bos_token", default: "<|startoftext|>")
        let end = try token("eos_token", default: "<|endoftext|>")
        let unknown = try token("unk_token", default: "<|endoftext|>")
        let pad = try token("pad_token", default: "<|endoftext|>")
        (startToken, endToken, unknownToken, padToken) = (start.1, end.1, unknown.1, pad.1)
        maxLength = (config["model_max_length"] as? NSNumber)?.intValue ?? 77
        guard maxLength >= 2 && maxLength <= 4096 else {
            throw DiffusionError("\(directory)/tokenizer_config.json: model_max_length \(maxLength) outside 2...4096")
        }
        var texts: [String: Int] = [:]
        for (text, id) in [start, end, unknown, pad] { texts[text] = id }
        specialTexts = texts.map { (Array($0.key.unicodeScalars), $0.value) }.sorted { $0.text.count > $1.text.count }
    }

    /// The `maxLength` ids the text encoder reads for `prompt`.
    public func encode(_ prompt: String) -> [Int] {
        var ids: [Int] = []
        for piece in splitSpecialTokens(prompt) {
            switch piece {
            case .special(let id): ids.append(id)
            case .text(let text): for word in Self.words(Self.normalize(text)) { ids += bpe(word) }
            }
        }
        ids = [startToken] + ids.prefix(maxLength - 2) + [endToken]
        return ids + [Int](repeating: padToken, count: maxLength - ids.count)
    }

    enum Piece: Equatable { case text(String), special(Int) }

    /// The prompt cut at every occurrence of a special token's text (leftmost, then longest).
    func splitSpecialTokens(_ prompt: String) -> [Piece] {
        let scalars = Array(prompt.unicodeScalars)
        var pieces: [Piece] = []
        var text = String.UnicodeScalarView()
        var i = 0
        while i < scalars.count {
            if let match = specialTexts.first(where: { scalars[i...].starts(with: $0.text) }) {
                if !text.isEmpty { pieces.append(.text(String(text))) }
                text = String.UnicodeScalarView()
                pieces.append(.special(match.id))
                i += match.text.count
            } else {
                text.append(scalars[i])
                i += 1
            }
        }
        if !text.isEmpty { pieces.append(.text(String(text))) }
        return pieces
    }

    /// NFC, whitespace runs to one space, then lower case code point by code point.
    static func normalize(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        var inWhitespace = false
        for scalar in text.precomposedStringWithCanonicalMapping.unicodeScalars {
            if scalar.properties.isWhitespace {
                if !inWhitespace { out.append(" ") }
                inWhitespace = true
                continue
            }
            inWhitespace = false
            out.append(contentsOf: scalar.properties.lowercaseMapping.unicodeScalars)
        }
        return String(out)
    }

    /// CLIP's pre-tokenisation: the matches of its pattern, the whitespace between dropped.
    static func words(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        var words: [String] = []
        var i = 0
        func isLetter(_ s: Unicode.Scalar) -> Bool {
            switch s.properties.generalCategory {
            case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
            default: return false
            }
        }
        func isNumber(_ s: Unicode.Scalar) -> Bool {
            switch s.properties.generalCategory {
            case .decimalNumber, .letterNumber, .otherNumber: return true
            default: return false
            }
        }
        // (CLIP's pattern begins with the special tokens' texts, but ByteLevel's own
        // GPT-2 split then cuts such a match into punctuation, letters, punctuation:
        // the same words as leaving them out.)
        let literals = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"].map { Array($0.unicodeScalars) }
        while i < scalars.count {
            let s = scalars[i]
            if s.properties.isWhitespace { i += 1; continue }
            var end = i + 1
            if let literal = literals.first(where: { scalars[i...].starts(with: $0) }) {
                end = i + literal.count
            } else if isLetter(s) {
                while end < scalars.count && isLetter(scalars[end]) { end += 1 }
            } else if !isNumber(s) {
                while end < scalars.count, !scalars[end].properties.isWhitespace, !isLetter(scalars[end]), !isNumber(scalars[end]) {
                    end += 1
                }
            }
            var word = String.UnicodeScalarView()
            word.append(contentsOf: scalars[i..<end])
            words.append(String(word))
            i = end
        }
        return words
    }

    /// GPT-2's map of bytes to printable code points: the printable Latin-1 bytes
    /// stand for themselves, the other 68 for 256, 257, ... in byte order.
    static let byteSymbols: [String] = {
        var symbols = [String](repeating: "", count: 256)
        var next = 256
        for byte in 0..<256 {
            let printable = (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
            symbols[byte] = String(Unicode.Scalar(UInt32(printable ? byte : next))!)
            if !printable { next += 1 }
        }
        return symbols
    }()

    /// The ids of one pre-tokenised word.
    func bpe(_ word: String) -> [Int] {
        var symbols = word.utf8.map { Self.byteSymbols[Int($0)] }
        symbols[symbols.count - 1] += "</w>"
        while symbols.count > 1 {
            var best: (rank: Int, at: Int)?
            for i in 0..<(symbols.count - 1) {
                if let rank = ranks["\(symbols[i]) \(symbols[i + 1])"], rank < best?.rank ?? .max { best = (rank, i) }
            }
            guard let best else { break }
            symbols[best.at] += symbols[best.at + 1]
            symbols.remove(at: best.at + 1)
        }
        return symbols.map { vocabulary[$0] ?? unknownToken }
    }
}
