import Foundation
import NovaCore
import NovaTestSupport
import Testing

/// The vectors of `shared/spec/vectors`, computed by an independent implementation.
@Suite struct VectorTests {
    let decoder = EventDecoder()
    let receivedAt = Timestamp(microseconds: 1_700_000_000_000_000)

    @Test func everyEventIdAndNormalizedTime() throws {
        let vectors = try Fixtures.vector("event-ids.json").arrayValue
        #expect(vectors.count == 15)
        for (k, vector) in vectors.enumerated() {
            let event = try decoder.decode(vector["event"]!, receivedAt: receivedAt).get()
            let preimage = Event.preimage(scopeId: event.scopeId, sourceTruthTime: event.sourceTruthTime, fields: event.fields)
            #expect(preimage.map { String($0, radix: 16).leftPadded(to: 2) }.joined() == vector["preimageHex"]?.stringValue, "vector \(k)")
            #expect(event.eventId.hex == vector["eventId"]?.stringValue, "vector \(k)")
            #expect(event.sourceTruthTime.rfc3339 == vector["sourceTruthTimeNormalized"]?.stringValue, "vector \(k)")
            // The id given back on ingest is accepted.
            var withId = vector["event"]!.objectMembers
            withId.append(JSONMember("eventId", .string(event.eventId.hex)))
            #expect(try decoder.decode(.object(withId), receivedAt: receivedAt).get() == event)
            // The pre-image alone (as a sync batch of version 2 carries it) gives the same event.
            let hex = Array(vector["preimageHex"]!.stringValue!.utf8)
            let bytes = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
            let fromPreimage = try bytes.withUnsafeBytes {
                try decoder.decode(preimage: $0, eventId: event.eventId, canonicalTruthTime: event.canonicalTruthTime.microseconds)
            }
            #expect(fromPreimage == event, "vector \(k)")
        }
    }

    @Test func everyInvalidEventIsRejectedNamingItsField() throws {
        let cases = try Fixtures.vector("invalid-events.json").arrayValue
        #expect(cases.count == VectorFields.expected.count)
        for item in cases {
            let why = item["why"]!.stringValue!
            let result = decoder.decode(item["event"]!, receivedAt: receivedAt)
            guard case .failure(let error) = result else {
                Issue.record("accepted an invalid event: \(why)")
                continue
            }
            #expect(error.field == VectorFields.expected[why], "\(why): \(error)")
            #expect(error.message(index: 3).hasPrefix("events[3].\(VectorFields.expected[why]!): "), "\(why)")
        }
    }

    @Test func messageOfTheContractExample() throws {
        let event = JSONValue.object([
            JSONMember("lane", .string("raw")), JSONMember("scopeId", .string("s")),
            JSONMember("sourceTruthTime", .string("27/01/2026 14:32")), JSONMember("connectionId", .string("c")),
            JSONMember("sequence", .number(JSONNumber(1))), JSONMember("bytes", .string("")),
        ])
        guard case .failure(let error) = decoder.decode(event, receivedAt: receivedAt) else {
            Issue.record("accepted")
            return
        }
        #expect(error.message(index: 3) == #"events[3].sourceTruthTime: not an RFC 3339 timestamp: "27/01/2026 14:32""#)
    }

    @Test func fixtureCopiesMatchTheSpec() throws {
        let spec = Fixtures.repositoryRoot.deletingLastPathComponent().appendingPathComponent("shared/spec/vectors")
        guard FileManager.default.fileExists(atPath: spec.path) else { return }  // CI clones hold only the copy
        for name in ["event-ids.json", "invalid-events.json", "ordering.json"] {
            #expect(try Data(contentsOf: spec.appendingPathComponent(name)) == Data(contentsOf: Fixtures.vectorURL(name)), "\(name)")
        }
    }
}

extension String {
    func leftPadded(to width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}
