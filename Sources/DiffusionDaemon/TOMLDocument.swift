import Foundation

/// The part of TOML 1.0 a configuration file needs, parsed strictly: `[table]`
/// headers (dotted names allowed), `key = value` with bare or quoted keys, basic
/// ("…", with escapes) and literal ('…') strings, integers (with `_`), floats,
/// booleans, and arrays of those (across lines, trailing comma allowed), and `#`
/// comments. Anything else (inline tables, dates, multi-line strings) is an
/// error naming its line, never a silent misreading.
struct TOMLDocument {
    /// Values by their full dotted key ("paths.spool"), in file order.
    private(set) var values: [(key: String, value: Any, line: Int)] = []

    struct ParseError: Error, CustomStringConvertible {
        let line: Int
        let message: String
        var description: String { "line \(line): \(message)" }
    }

    init(_ text: String) throws {
        var table = ""
        var seenKeys: Set<String> = []
        var seenTables: Set<String> = []
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { Array($0.utf8) }
        var number = 0
        while number < lines.count {
            var scanner = Scanner(bytes: lines[number], line: number + 1)
            number += 1
            scanner.skipBlank()
            if scanner.atEndOfLine { continue }
            if scanner.peek == UInt8(ascii: "[") {
                scanner.advance()
                scanner.skipBlank()
                table = try scanner.dottedKey()
                scanner.skipBlank()
                try scanner.expect("]")
                try scanner.expectEndOfLine()
                guard seenTables.insert(table).inserted else { throw ParseError(line: scanner.line, message: "table [\(table)] appears twice") }
                continue
            }
            let key = try scanner.dottedKey()
            let fullKey = table.isEmpty ? key : "\(table).\(key)"
            scanner.skipBlank()
            try scanner.expect("=")
            scanner.skipBlank()
            // An array may continue on the following lines.
            var value: Any?
            while value == nil {
                do {
                    value = try scanner.value()
                } catch Scanner.NeedsMoreInput.line where number < lines.count {
                    scanner.append(lines[number])
                    number += 1
                }
            }
            try scanner.expectEndOfLine()
            guard seenKeys.insert(fullKey).inserted else { throw ParseError(line: scanner.line, message: "\(fullKey) is set twice") }
            values.append((fullKey, value!, scanner.line))
        }
    }

    private struct Scanner {
        enum NeedsMoreInput: Error { case line }
        var bytes: [UInt8]
        var index = 0
        let line: Int

        init(bytes: [UInt8], line: Int) {
            self.bytes = bytes
            self.line = line
        }

        var peek: UInt8? { index < bytes.count ? bytes[index] : nil }
        var atEndOfLine: Bool { peek == nil || peek == UInt8(ascii: "#") || peek == UInt8(ascii: "\r") }
        mutating func advance() { index += 1 }
        mutating func append(_ more: [UInt8]) { bytes += [UInt8(ascii: "\n")] + more }

        func fail(_ message: String) -> ParseError { ParseError(line: line, message: message) }

        mutating func skipBlank() {
            while let byte = peek, byte == 0x20 || byte == 0x09 { advance() }
        }

        /// Blanks, newlines and comments between array elements.
        mutating func skipArraySpace() throws {
            while true {
                skipBlank()
                guard let byte = peek else { throw NeedsMoreInput.line }
                if byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") {
                    advance()
                } else if byte == UInt8(ascii: "#") {
                    while let next = peek, next != UInt8(ascii: "\n") { advance() }
                } else {
                    return
                }
            }
        }

        mutating func expect(_ character: Character) throws {
            guard peek == character.asciiValue else { throw fail("expected \"\(character)\"") }
            advance()
        }

        mutating func expectEndOfLine() throws {
            skipBlank()
            guard atEndOfLine else { throw fail("unexpected text after the value") }
        }

        mutating func dottedKey() throws -> String {
            var parts: [String] = []
            repeat {
                if !parts.isEmpty { advance() }
                skipBlank()
                if peek == UInt8(ascii: "\"") || peek == UInt8(ascii: "'") {
                    parts.append(try string())
                } else {
                    let start = index
                    while let byte = peek, byte.isBareKeyByte { advance() }
                    guard index > start else { throw fail("expected a key") }
                    parts.append(String(decoding: bytes[start..<index], as: UTF8.self))
                }
                skipBlank()
            } while peek == UInt8(ascii: ".")
            return parts.joined(separator: ".")
        }

        mutating func value() throws -> Any {
            guard let byte = peek else { throw fail("a value is missing") }
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                return try string()
            case UInt8(ascii: "["):
                let start = index
                advance()
                var items: [Any] = []
                do {
                    while true {
                        try skipArraySpace()
                        if peek == UInt8(ascii: "]") { advance(); return items }
                        items.append(try value())
                        try skipArraySpace()
                        if peek == UInt8(ascii: ",") { advance(); continue }
                        try expect("]")
                        return items
                    }
                } catch NeedsMoreInput.line {
                    index = start
                    throw NeedsMoreInput.line
                }
            case UInt8(ascii: "{"):
                throw fail("inline tables are not supported here; use a [table]")
            default:
                let start = index
                while let next = peek, !(next == 0x20 || next == 0x09 || next == UInt8(ascii: ",") || next == UInt8(ascii: "]")
                    || next == UInt8(ascii: "#") || next == UInt8(ascii: "\n") || next == UInt8(ascii: "\r")) { advance() }
                let word = String(decoding: bytes[start..<index], as: UTF8.self)
                if word == "true" { return true }
                if word == "false" { return false }
                let digits = word.replacingOccurrences(of: "_", with: "")
                if let integer = Int(digits) { return integer }
                if digits.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }), let real = Double(digits), real.isFinite {
                    return real
                }
                throw fail("\(word.isEmpty ? "a value" : "\"\(word)\"") is not a string, number, boolean or array")
            }
        }

        mutating func string() throws -> String {
            let quote = peek!
            advance()
            var out: [UInt8] = []
            while let byte = peek {
                advance()
                if byte == quote { return String(decoding: out, as: UTF8.self) }
                if byte == UInt8(ascii: "\n") { break }
                guard byte == UInt8(ascii: "\\"), quote == UInt8(ascii: "\"") else {
                    out.append(byte)
                    continue
                }
                guard let escaped = peek else { break }
                advance()
                switch escaped {
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "\\"), UInt8(ascii: "\""): out.append(escaped)
                case UInt8(ascii: "u"), UInt8(ascii: "U"):
                    let width = escaped == UInt8(ascii: "u") ? 4 : 8
                    guard index + width <= bytes.count,
                          let code = UInt32(String(decoding: bytes[index..<(index + width)], as: UTF8.self), radix: 16),
                          let scalar = Unicode.Scalar(code)
                    else { throw fail("a bad \\u escape") }
                    index += width
                    out += Array(String(Character(scalar)).utf8)
                default:
                    throw fail("unknown escape \\\(Character(Unicode.Scalar(escaped)))")
                }
            }
            throw fail("a string is not closed on its line")
        }
    }
}

private extension UInt8 {
    var isBareKeyByte: Bool {
        (self >= 0x30 && self <= 0x39) || (self >= 0x41 && self <= 0x5A) || (self >= 0x61 && self <= 0x7A)
            || self == UInt8(ascii: "_") || self == UInt8(ascii: "-")
    }
}
