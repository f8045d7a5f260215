import Foundation
import Testing
@testable import DiffusionDaemon

/// The TOML reader against a table of TOML 1.0 documents, valid and invalid,
/// covering every form `etc/diffusiond.toml` may use.
@Suite struct TOMLDocumentTests {
    func values(_ text: String) throws -> [String: Any] {
        Dictionary(uniqueKeysWithValues: try TOMLDocument(text).values.map { ($0.key, $0.value) })
    }

    @Test func readsTheSubsetConfigFilesUse() throws {
        let values = try values("""
            # comment
            top = 'literal \\n kept'
            [paths]
            state = "state\\tdir"   # trailing comment
            models = [
              "a",  # one
              "b",
            ]
            [limits]
            max_steps = 1_000
            job_seconds = 2.5
            [a."b c"]
            flag = true
            """)
        #expect(values["top"] as? String == "literal \\n kept")
        #expect(values["paths.state"] as? String == "state\tdir")
        #expect(values["paths.models"] as? [String] == ["a", "b"])
        #expect(values["limits.max_steps"] as? Int == 1000)
        #expect(values["limits.job_seconds"] as? Double == 2.5)
        #expect(values["a.b c.flag"] as? Bool == true)
    }

    enum Expected: Sendable {
        case string(String), integer(Int), real(Double), bool(Bool), array, invalid
    }

    /// One value each: the document `v = TEXT` and what it must read as.
    @Test(arguments: [
        (#""\b\t\n\f\r\"\\""#, Expected.string("\u{08}\t\n\u{0C}\r\"\\")),
        (#""\u00e9\U0001F600""#, .string("é😀")), ("'C:\\path'", .string("C:\\path")),
        ("\"\"\"\nfirst\nsecond\"\"\"", .string("first\nsecond")), ("\"\"\"one \\\n    two\"\"\"", .string("one two")),
        ("'''\nraw \\n ''quoted'''''", .string("raw \\n ''quoted''")), ("\"\"\"a\"\"b\"\"\"", .string("a\"\"b")),
        ("0x_1", .invalid), ("0xDEAD_beef", .integer(0xDEAD_BEEF)), ("0o755", .integer(0o755)), ("0b1010", .integer(10)),
        ("-17", .integer(-17)), ("+3", .integer(3)), ("0", .integer(0)), ("1_000_000", .integer(1_000_000)),
        ("3.25", .real(3.25)), ("-1e3", .real(-1000)), ("6.5E-2", .real(0.065)), ("1e+2", .real(100)), ("inf", .real(.infinity)),
        ("true", .bool(true)), ("false", .bool(false)), ("[1, [2, 3], \"x\",]", .array),
    ])
    func readsEveryValueForm(text: String, expected: Expected) throws {
        if case .invalid = expected {
            #expect(throws: TOMLDocument.ParseError.self) { try TOMLDocument("v = \(text)") }
            return
        }
        let value = try values("v = \(text)")["v"]
        switch expected {
        case .array:
            let list = try #require(value as? [Any])
            #expect(list.count == 3 && (list[1] as? [Int]) == [2, 3] && list[2] as? String == "x")
        case .string(let string): #expect(value as? String == string, "\(text)")
        case .integer(let integer): #expect(value as? Int == integer, "\(text)")
        case .real(let real): #expect(value as? Double == real, "\(text)")
        case .bool(let flag): #expect(value as? Bool == flag, "\(text)")
        case .invalid: break
        }
    }

    /// CRLF line ends and a BOM: the same values as LF (it once read as empty).
    @Test func crlfAndABOMReadTheSame() throws {
        let text = "[paths]\nstate = \"/srv/state\"\nmodels = [\n  \"a\",\n]\n[render]\nthreads = 2\ns = \"\"\"\nx\ny\"\"\"\n"
        let lf = try values(text)
        let crlf = try values("\u{FEFF}" + text.replacingOccurrences(of: "\n", with: "\r\n"))
        #expect(crlf["paths.state"] as? String == "/srv/state" && crlf["render.threads"] as? Int == 2)
        #expect(crlf["paths.models"] as? [String] == ["a"] && crlf["render.s"] as? String == "x\ny")
        #expect(Set(lf.keys) == Set(crlf.keys) && lf.count == 4)
    }

    @Test(arguments: [
        ("a = {b = 1}", "line 1: inline tables"), ("a = 1\na = 2", "line 2: a is set twice"),
        ("a = \"open", "line 1: a string is not closed"), ("a = 1979-05-27", "line 1: dates and times"),
        ("[t]\n[t]", "line 2: table [t] appears twice"), ("a = 1 b", "line 1: unexpected text"),
        ("a = [1,\n 2", "line 2: an array is not closed"), ("a = 007", "line 1: \"007\" is not"), ("a = _1", "line 1: \"_1\" is not"),
        ("a = .5", "line 1: \".5\" is not"), ("a = 1.", "line 1: \"1.\" is not"), ("a = 1__0", "line 1: \"1__0\" is not"),
        ("a = 0xG", "line 1: \"0xG\" is not"), ("a = \"\\q\"", "line 1: unknown escape \\q"), ("a = \"\\u12\"", "line 1: a bad \\u escape"),
        ("a = \"\"\"never", "line 1: a multi-line string is not closed"), ("a = 1\rb = 2", "line 1: a carriage return"),
        ("a =", "line 1: a value is missing"), ("= 1", "line 1: expected a key"), ("[[t]]", "line 1: arrays of tables"),
        ("a = 99999999999999999999", "line 1: \"99999999999999999999\" is not"), ("\n\na = \"x\u{01}\"", "line 3: a control character"),
    ])
    func refusesInvalidDocuments(text: String, message: String) {
        do {
            _ = try TOMLDocument(text)
            Issue.record("\(text.debugDescription) was accepted")
        } catch {
            #expect(error is TOMLDocument.ParseError && "\(error)".hasPrefix(message), "\(text.debugDescription): \(error)")
        }
    }

    /// Through the daemon's own reader: a CRLF file's paths are the ones it names.
    @Test func aCRLFConfigNamesItsPaths() throws {
        let root = try DaemonProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try "[paths]\r\nstate = \"here\"\r\nsocket = \"here/s.sock\"\r\n".write(toFile: "\(root)/c.toml", atomically: true, encoding: .utf8)
        let config = try DaemonConfig(path: "\(root)/c.toml")
        #expect(config.stateDirectory == "\(root)/here" && config.socketPath == "\(root)/here/s.sock")
    }
}
