import Foundation

/// The part of TOML 1.0 a configuration file needs, parsed strictly over the
/// whole document (LF or CRLF line ends, an optional UTF-8 BOM): `[table]`
/// headers and dotted keys (bare or quoted); basic strings with every escape
/// (`\b \t \n \f \r \" \\ \uXXXX \UXXXXXXXX`), literal strings, and both kinds
/// multi-line (`"""` with line-ending backslashes, `'''`); integers in decimal,
/// `0x`, `0o` and `0b` with `_` only between digits and no leading zeros;
/// floats with TOML's rules (`1.0`, `1e3`, `inf`, `nan`; never `.5` or `1.`);
/// booleans; arrays across lines (comments inside, trailing comma allowed); and
/// `#` comments. Inline tables and dates are refused, naming their line, never
/// misread.
struct TOMLDocument {
    /// Values by their full dotted key ("paths.spool"), in file order.
    private(set) var values: [(key: String, value: Any, line: Int)] = []

    struct ParseError: Error, CustomStringConvertible {
        let line: Int
        let message: String
        var description: String { "line \(line): \(message)" }
    }

    init(_ text: String) throws {
        var scanner = Scanner(Array(text.utf8))
        if scanner.bytes.starts(with: [0xEF, 0xBB, 0xBF]) { scanner.index = 3 }
        var table = ""
        var seenKeys: Set<String> = []
        var seenTables: Set<String> = []
        while true {
            try scanner.skipBlankLines()
            guard scanner.peek != nil else { break }
            let line = scanner.line
            if scanner.peek == UInt8(ascii: "[") {
                scanner.index += 1
                guard scanner.peek != UInt8(ascii: "[") else { throw scanner.fail("arrays of tables ([[...]]) are not supported here") }
                table = try scanner.dottedKey()
                try scanner.expect("]")
                try scanner.expectEndOfLine()
                guard seenTables.insert(table).inserted else { throw ParseError(line: line, message: "table [\(table)] appears twice") }
                continue
            }
            let key = try scanner.dottedKey()
            let fullKey = table.isEmpty ? key : "\(table).\(key)"
            try scanner.expect("=")
            scanner.skipBlank()
            let value = try scanner.value()
            try scanner.expectEndOfLine()
            guard seenKeys.insert(fullKey).inserted else { throw ParseError(line: line, message: "\(fullKey) is set twice") }
            values.append((fullKey, value, line))
        }
    }

    private struct Scanner {
        let bytes: [UInt8]
        var index = 0

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var peek: UInt8? { index < bytes.count ? bytes[index] : nil }
        func peek(_ offset: Int) -> UInt8? { index + offset < bytes.count ? bytes[index + offset] : nil }
        /// The 1-based line of the current position (every line end goes through `newline`).
        var line = 1

        func fail(_ message: String) -> ParseError { ParseError(line: line, message: message) }

        mutating func skipBlank() {
            while let byte = peek, byte == 0x20 || byte == 0x09 { index += 1 }
        }

        /// A comment up to (not including) its line end; control characters other than tab are invalid.
        mutating func skipComment() throws {
            guard peek == UInt8(ascii: "#") else { return }
            while let byte = peek, byte != 0x0A, !(byte == 0x0D && peek(1) == 0x0A) {
                if byte < 0x20 && byte != 0x09 || byte == 0x7F { throw fail("a control character in a comment") }
                index += 1
            }
        }

        /// A line end (LF or CRLF); false at the end of the document.
        mutating func newline() throws -> Bool {
            if peek == 0x0A {
                index += 1
            } else if peek == 0x0D {
                guard peek(1) == 0x0A else { throw fail("a carriage return not followed by a line feed") }
                index += 2
            } else {
                return false
            }
            line += 1
            return true
        }

        mutating func skipBlankLines() throws {
            while true {
                skipBlank()
                try skipComment()
                guard try newline() else { return }
            }
        }

        mutating func expect(_ character: Character) throws {
            skipBlank()
            guard peek == character.asciiValue else { throw fail("expected \"\(character)\"") }
            index += 1
        }

        mutating func expectEndOfLine() throws {
            skipBlank()
            try skipComment()
            guard try newline() || peek == nil else { throw fail("unexpected text after the value") }
        }

        mutating func dottedKey() throws -> String {
            var parts: [String] = []
            repeat {
                if !parts.isEmpty { index += 1 }
                skipBlank()
                if peek == UInt8(ascii: "\"") || peek == UInt8(ascii: "'") {
                    guard peek(1) != peek || peek(2) != peek else { throw fail("a key cannot be a multi-line string") }
                    parts.append(try string())
                } else {
                    let start = index
                    while let byte = peek, byte.isBareKeyByte { index += 1 }
                    guard index > start else { throw fail("expected a key") }
                    parts.append(String(decoding: bytes[start..<index], as: UTF8.self))
                }
                skipBlank()
            } while peek == UInt8(ascii: ".")
            return parts.joined(separator: ".")
        }

        mutating func value() throws -> Any {
            guard let byte = peek, byte != 0x0A, byte != 0x0D else { throw fail("a value is missing") }
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                return try string()
            case UInt8(ascii: "["):
                index += 1
                var items: [Any] = []
                while true {
                    try skipArraySpace()
                    if peek == UInt8(ascii: "]") { index += 1; return items }
                    items.append(try value())
                    try skipArraySpace()
                    if peek == UInt8(ascii: ",") { index += 1; continue }
                    guard peek == UInt8(ascii: "]") else { throw fail(peek == nil ? "an array is not closed" : "expected \",\" or \"]\" in an array") }
                    index += 1
                    return items
                }
            case UInt8(ascii: "{"):
                throw fail("inline tables are not supported here; use a [table]")
            default:
                let start = index
                while let next = peek, !(next == 0x20 || next == 0x09 || next == 0x0A || next == 0x0D
                    || next == UInt8(ascii: ",") || next == UInt8(ascii: "]") || next == UInt8(ascii: "#")) { index += 1 }
                let word = String(decoding: bytes[start..<index], as: UTF8.self)
                if word == "true" { return true }
                if word == "false" { return false }
                if let integer = Self.integer(word) { return integer }
                if let real = Self.float(word) { return real }
                if word.count >= 10, word.dropFirst(4).first == "-", word.prefix(4).allSatisfy(\.isNumber) {
                    throw fail("dates and times are not supported here")
                }
                throw fail("\(word.isEmpty ? "a value" : "\"\(word)\"") is not a string, number, boolean or array")
            }
        }

        /// Blanks, line ends and comments between array elements.
        mutating func skipArraySpace() throws {
            while true {
                skipBlank()
                try skipComment()
                guard try newline() else { return }
            }
        }

        /// Digits of `radix` with `_` only between two digits.
        static func digits(_ text: Substring, radix: Int) -> Substring? {
            guard let first = text.first, let last = text.last, first != "_", last != "_", !text.contains("__") else { return nil }
            guard text.allSatisfy({ $0 == "_" || $0.isHexDigit && Int(String($0), radix: radix) != nil }) else { return nil }
            return Substring(text.replacingOccurrences(of: "_", with: ""))
        }

        static func integer(_ word: String) -> Int? {
            for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where word.hasPrefix(prefix) {
                return digits(word.dropFirst(2), radix: radix).flatMap { Int($0, radix: radix) }
            }
            let unsigned = word.first == "+" || word.first == "-" ? word.dropFirst() : Substring(word)
            guard let clean = digits(unsigned, radix: 10), clean == "0" || !clean.hasPrefix("0") else { return nil }
            return Int(word.first == "-" ? "-\(clean)" : String(clean))
        }

        static func float(_ word: String) -> Double? {
            let sign: Double = word.first == "-" ? -1 : 1
            let unsigned = word.first == "+" || word.first == "-" ? word.dropFirst() : Substring(word)
            if unsigned == "inf" { return sign * .infinity }
            if unsigned == "nan" { return .nan }
            // integer part, then a fraction (".digits") and/or an exponent ("e[+-]digits")
            let exponentAt = unsigned.firstIndex { $0 == "e" || $0 == "E" }
            let mantissa = unsigned[..<(exponentAt ?? unsigned.endIndex)]
            let parts = mantissa.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count <= 2, let whole = digits(parts[0], radix: 10), whole == "0" || !whole.hasPrefix("0") else { return nil }
            var text = String(whole)
            if parts.count == 2 {
                guard let fraction = digits(parts[1], radix: 10) else { return nil }
                text += ".\(fraction)"
            }
            if let exponentAt {
                var exponent = unsigned[unsigned.index(after: exponentAt)...]
                let exponentSign = exponent.first == "+" || exponent.first == "-" ? String(exponent.removeFirst()) : ""
                guard let power = digits(exponent, radix: 10) else { return nil }
                text += "e\(exponentSign)\(power)"
            } else if parts.count == 1 {
                return nil
            }
            return Double(text).map { sign * $0 }
        }

        mutating func string() throws -> String {
            let quote = peek!
            let literal = quote == UInt8(ascii: "'")
            let multiLine = peek(1) == quote && peek(2) == quote
            index += multiLine ? 3 : 1
            // A line end right after the opening delimiter is not part of the string.
            if multiLine { _ = try newline() }
            var out: [UInt8] = []
            while let byte = peek {
                if byte == quote {
                    if !multiLine { index += 1; return String(decoding: out, as: UTF8.self) }
                    if peek(1) == quote && peek(2) == quote {
                        // Up to two quotes may end the content just before the closing three.
                        var extra = 0
                        while extra < 2 && peek(3 + extra) == quote { extra += 1 }
                        out += [UInt8](repeating: quote, count: extra)
                        index += 3 + extra
                        return String(decoding: out, as: UTF8.self)
                    }
                    out.append(byte)
                    index += 1
                    continue
                }
                if byte == 0x0A || byte == 0x0D {
                    guard multiLine else { break }
                    guard try newline() else { throw fail("a carriage return not followed by a line feed") }
                    out.append(0x0A)
                    continue
                }
                if byte < 0x20 && byte != 0x09 || byte == 0x7F { throw fail("a control character in a string (write it as an escape)") }
                index += 1
                guard byte == UInt8(ascii: "\\"), !literal else {
                    out.append(byte)
                    continue
                }
                guard let escaped = peek else { break }
                index += 1
                switch escaped {
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "\\"), UInt8(ascii: "\""): out.append(escaped)
                case UInt8(ascii: "u"), UInt8(ascii: "U"):
                    let width = escaped == UInt8(ascii: "u") ? 4 : 8
                    guard index + width <= bytes.count,
                          bytes[index..<(index + width)].allSatisfy({ Character(Unicode.Scalar($0)).isHexDigit }),
                          let code = UInt32(String(decoding: bytes[index..<(index + width)], as: UTF8.self), radix: 16),
                          let scalar = Unicode.Scalar(code)
                    else { throw fail("a bad \\\(Character(Unicode.Scalar(escaped))) escape") }
                    index += width
                    out += Array(String(Character(scalar)).utf8)
                case 0x20, 0x09, 0x0A, 0x0D where multiLine:
                    // A line-ending backslash: the line end and the white space after it go.
                    index -= 1
                    skipBlank()
                    guard try newline() else { throw fail("only white space may follow a line-ending backslash") }
                    while let next = peek, next == 0x20 || next == 0x09 || next == 0x0A || next == 0x0D {
                        if !(try newline()) { index += 1 }
                    }
                default:
                    throw fail("unknown escape \\\(Character(Unicode.Scalar(escaped)))")
                }
            }
            throw fail(multiLine ? "a multi-line string is not closed" : "a string is not closed on its line")
        }
    }
}

private extension UInt8 {
    var isBareKeyByte: Bool {
        (self >= 0x30 && self <= 0x39) || (self >= 0x41 && self <= 0x5A) || (self >= 0x61 && self <= 0x7A)
            || self == UInt8(ascii: "_") || self == UInt8(ascii: "-")
    }
}
