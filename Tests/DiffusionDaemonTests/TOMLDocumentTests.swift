import Testing
@testable import DiffusionDaemon

@Suite struct TOMLDocumentTests {
    @Test func readsTheSubsetConfigFilesUse() throws {
        let document = try TOMLDocument("""
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
        let values = Dictionary(uniqueKeysWithValues: document.values.map { ($0.key, $0.value) })
        #expect(values["top"] as? String == "literal \\n kept")
        #expect(values["paths.state"] as? String == "state\tdir")
        #expect(values["paths.models"] as? [String] == ["a", "b"])
        #expect(values["limits.max_steps"] as? Int == 1000)
        #expect(values["limits.job_seconds"] as? Double == 2.5)
        #expect(values["a.b c.flag"] as? Bool == true)
    }

    @Test func refusesWhatItDoesNotRead() {
        for (text, message) in [
            ("a = {b = 1}", "line 1: inline tables"), ("a = 1\na = 2", "line 2: a is set twice"),
            ("a = \"open", "line 1: a string is not closed"), ("a = 1979-05-27", "line 1: \"1979-05-27\" is not"),
            ("[t]\n[t]", "line 2: table [t] appears twice"), ("a = 1 b", "line 1: unexpected text"),
        ] {
            #expect(throws: TOMLDocument.ParseError.self) { try TOMLDocument(text) }
            do { _ = try TOMLDocument(text) } catch { #expect("\(error)".hasPrefix(message), "\(error)") }
        }
    }
}
