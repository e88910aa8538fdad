import NovaCore
import Testing

@Suite struct CanonicalJSONTests {
    func canonical(_ text: String) throws -> String {
        String(decoding: CanonicalJSON.serialize(try JSONParser.parse(text)), as: UTF8.self)
    }

    @Test(arguments: [
        ("0", "0"), ("-0", "0"), ("-0.0", "0"), ("1", "1"), ("408.0", "408"), ("1e21", "1e+21"), ("1e20", "100000000000000000000"),
        ("123456789012345678901", "123456789012345680000"), ("1e-7", "1e-7"), ("0.000001", "0.000001"), ("1.25e-9", "1.25e-9"),
        ("0.1", "0.1"), ("-1.5", "-1.5"), ("9007199254740993", "9007199254740992"), ("5e-324", "5e-324"),
        ("1.7976931348623157e308", "1.7976931348623157e+308"), ("333333333.33333329", "333333333.3333333"),
        ("1E3", "1000"), ("0.3333333333333333", "0.3333333333333333"), ("-9223372036854775808", "-9223372036854776000"),
        ("4.35", "4.35"), ("0.002", "0.002"), ("1e-6", "0.000001"), ("123e-20", "1.23e-18"),
    ])
    func ecmascriptNumbers(input: String, expected: String) throws {
        #expect(try canonical(input) == expected)
    }

    @Test func stringsAndKeyOrder() throws {
        #expect(try canonical(#"{"b":1,"a":2,"\u20ac":3,"\ud83d\ude00":4,"\uff61":5}"#) == "{\"a\":2,\"b\":1,\"€\":3,\"😀\":4,\"｡\":5}")
        #expect(try canonical(#""\u0001\u001f\b\f\n\r\t\"\\\/\u2028\u007f""#) == "\"\\u0001\\u001f\\b\\f\\n\\r\\t\\\"\\\\/\u{2028}\u{7f}\"")
        #expect(try canonical(#"[ {"z": [], "y": {}, "x": null} , true,false ]"#) == #"[{"x":null,"y":{},"z":[]},true,false]"#)
    }

    @Test(arguments: [
        #"{"a":1,"a":2}"#, "[1,]", "{", "01", "1.", ".5", "-", "1e", "\"\\ud800\"", "\"\\udc00x\"", "\"\u{01}\"", "nul", "[1] x",
        "1e400", "\"\\x\"", "{\"a\" 1}",
    ])
    func rejectsInvalidJSON(input: String) {
        #expect(throws: JSONSyntaxError.self) { try JSONParser.parse(input) }
    }

    @Test func rejectsInvalidUTF8AndDeepNesting() {
        #expect(throws: JSONSyntaxError.self) { try JSONParser.parse([0x22, 0xC3, 0x28, 0x22]) }
        #expect(throws: JSONSyntaxError.self) { try JSONParser.parse(String(repeating: "[", count: 200) + String(repeating: "]", count: 200)) }
        #expect(throws: Never.self) { try JSONParser.parse(String(repeating: "[", count: 100) + String(repeating: "]", count: 100)) }
    }

    @Test func integerLiterals() throws {
        guard case .number(let max) = try JSONParser.parse("9223372036854775807"),
              case .number(let over) = try JSONParser.parse("9223372036854775808"),
              case .number(let min) = try JSONParser.parse("-9223372036854775808"),
              case .number(let fraction) = try JSONParser.parse("1.0")
        else {
            Issue.record("not numbers")
            return
        }
        #expect(max.int64 == .max)
        #expect(over.int64 == nil && over.isIntegerLiteral)
        #expect(min.int64 == .min)
        #expect(fraction.int64 == nil && !fraction.isIntegerLiteral)
    }

    /// Answers are written into room reserved by `Event.jsonCapacity`: a string of nothing but
    /// bytes that need escaping (six bytes each at most) must still fit, in every lane.
    @Test func anEventsJSONFitsItsBoundWithEveryByteEscaped() throws {
        let worst = String(repeating: "\u{01}\u{1f}\"\\\n", count: 40)
        let payload = CanonicalPayload([JSONMember(worst, .string(worst))])
        let at = Timestamp(microseconds: 253_402_300_799_999_999)
        for fields in [
            LaneFields.raw(connectionId: worst, sequence: .max, bytes: Array(repeating: 0xFF, count: 1000)),
            .parsed(streamId: worst, streamType: worst, schemaVersion: worst, payload: payload),
            .ui(viewId: worst, payload: payload),
            .command(targetId: worst, commandType: worst, requestedBy: worst, payload: payload),
            .metadata(metadataType: worst, payload: payload),
        ] {
            let event = Event(scopeId: worst, sourceTruthTime: at, canonicalTruthTime: at, fields: fields)
            var out = Array("prefix".utf8)
            event.writeJSON(into: &out)
            #expect(out.count - 6 <= event.jsonCapacity)
            #expect(String(decoding: out.dropFirst(6), as: UTF8.self) == event.json)
            let parsed = try JSONParser.parse(event.json)
            #expect(parsed["scopeId"] == .string(worst))
        }
    }
}
