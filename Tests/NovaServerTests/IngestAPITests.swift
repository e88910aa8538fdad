import CompressNIO
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import NovaCore
import NovaTestSupport
import Testing

@Suite struct IngestAPITests {
    static let fiveLanes = [
        #"{"lane":"raw","scopeId":"s","sourceTruthTime":"2026-01-27T14:32:15.000001Z","connectionId":"uart0","sequence":1,"bytes":"AAEC"}"#,
        #"{"lane":"parsed","scopeId":"s","sourceTruthTime":"2026-01-27T14:32:15.000002Z","streamId":"gps","streamType":"position","schemaVersion":"1","payload":{"b":1,"a":[true,null]}}"#,
        #"{"lane":"ui","scopeId":"s","sourceTruthTime":"2026-01-27T14:32:15.000003Z","viewId":"map","payload":{"zoom":3}}"#,
        #"{"lane":"command","scopeId":"s","sourceTruthTime":"2026-01-27T14:32:15.000004Z","targetId":"d1","commandType":"arm","requestedBy":"op","payload":{}}"#,
        #"{"lane":"metadata","scopeId":"s","sourceTruthTime":"2026-01-27T14:32:15.000005Z","metadataType":"fw","payload":{"v":"1.0"}}"#,
    ]

    @Test(arguments: Backend.allCases)
    func allFiveLanesRoundTripInContractOrder(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, metrics in
            let response = try await client.post(ndjson: Self.fiveLanes.reversed())
            #expect(response.status == .ok)
            #expect(response.text == #"{"accepted":5,"duplicates":0,"rejected":[]}"# + "\n")
            let again = try await client.post(ndjson: Self.fiveLanes)
            #expect(again.text == #"{"accepted":0,"duplicates":5,"rejected":[]}"# + "\n")
            let read = try await client.get("/v1/events?scope=s&\(everything)&timebase=source")
            #expect(read.status == .ok)
            #expect(read.headers[.contentType] == "application/x-ndjson")
            #expect(read.headers[HTTPField.Name("Nova-Next-Cursor")!] == nil)
            let lanes = read.lines.map { (try? JSONParser.parse($0))?["lane"]?.stringValue ?? "" }
            #expect(lanes == ["raw", "parsed", "ui", "command", "metadata"])
            let parsed = try JSONParser.parse(read.lines[1])
            #expect(parsed["payload"] == (try JSONParser.parse(#"{"a":[true,null],"b":1}"#)))
            #expect(parsed["sourceTruthTime"]?.stringValue == "2026-01-27T14:32:15.000002Z")
            #expect(parsed["eventId"]?.stringValue?.count == 64)
            // Every answered line is a valid ingest line with a matching id.
            for line in read.lines {
                #expect(throws: Never.self) { try EventDecoder().decode(JSONParser.parse(line), receivedAt: .min).get() }
            }
            let exposition = String(decoding: metrics.exposition(), as: UTF8.self)
            #expect(exposition.contains(#"nova_ingest_events_total{result="accepted"} 5"#))
            #expect(exposition.contains(#"nova_ingest_events_total{result="duplicate"} 5"#))
        }
    }

    @Test(arguments: Backend.allCases)
    func jsonArrayBodies(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let body = "[" + Self.fiveLanes.joined(separator: ",\n") + "]"
            let response = try await client.execute(uri: "/v1/events", method: .post, headers: [.contentType: "application/json; charset=utf-8"], body: ByteBuffer(string: body))
            #expect(response.text == #"{"accepted":5,"duplicates":0,"rejected":[]}"# + "\n")
            let broken = try await client.execute(uri: "/v1/events", method: .post, headers: [.contentType: "application/json"], body: ByteBuffer(string: "[" + Self.fiveLanes[0]))
            #expect(broken.status == .badRequest)
            #expect(broken.errorMessage.hasPrefix("body: invalid JSON at byte"), "\(broken.errorMessage)")
            let object = try await client.execute(uri: "/v1/events", method: .post, headers: [.contentType: "application/json"], body: ByteBuffer(string: Self.fiveLanes[0]))
            #expect(object.status == .badRequest)
            #expect(object.errorMessage == "body: must be a JSON array of events, found an object")
        }
    }

    /// Every case of `invalid-events.json`, each between two valid neighbours in one batch.
    @Test(arguments: Backend.allCases)
    func invalidEventsAreRejectedAloneWithTheirReasons(backend: Backend) async throws {
        try await withRecorder(backend) { client, store, _ in
            let cases = try Fixtures.vector("invalid-events.json").arrayValue
            var lines = [String]()
            var invalidIndexes = [Int: String]()
            for (k, item) in cases.enumerated() {
                lines.append(#"{"lane":"raw","scopeId":"n","sourceTruthTime":"2026-01-27T14:32:15Z","connectionId":"c","sequence":\#(k),"bytes":""}"#)
                invalidIndexes[lines.count] = item["why"]!.stringValue!
                lines.append(item["event"]!.text)
            }
            lines.append("this is not json")
            let response = try await client.post(ndjson: lines)
            #expect(response.status == .ok)
            #expect(response.json["accepted"] == .number(JSONNumber(Int64(cases.count))))
            let rejected = response.json["rejected"]!.arrayValue
            #expect(rejected.count == cases.count + 1)
            for r in rejected {
                guard case .number(let n) = r["index"]!, let index = n.int64.map(Int.init) else { continue }
                let message = r["error"]!.stringValue!
                #expect(message.hasPrefix("events[\(index)]"), "\(message)")
                if let why = invalidIndexes[index] {
                    #expect(message.hasPrefix("events[\(index)].\(VectorFields.expected[why]!): "), "\(why): \(message)")
                } else {
                    #expect(index == lines.count - 1 && message.contains("invalid JSON"), "\(message)")
                }
            }
            let stored = try await store.stats()
            #expect(stored.totalEvents == Int64(cases.count))
            #expect(stored.lanes.map(\.scopeId) == ["n"])
        }
    }

    @Test(arguments: Backend.allCases)
    func atomicBatchesAreAllOrNothing(backend: Backend) async throws {
        try await withRecorder(backend) { client, store, _ in
            let bad = #"{"lane":"raw","scopeId":"s","sourceTruthTime":"yesterday","connectionId":"c","sequence":1,"bytes":""}"#
            let refused = try await client.post("/v1/events?atomic=true", ndjson: Self.fiveLanes + [bad])
            #expect(refused.status == .unprocessableContent)
            #expect(refused.errorMessage.contains("nothing stored"))
            #expect(refused.json["rejected"]?.arrayValue.count == 1)
            #expect(try await store.stats().totalEvents == 0)
            let accepted = try await client.post("/v1/events?atomic=true", ndjson: Self.fiveLanes)
            #expect(accepted.status == .ok)
            #expect(try await store.stats().totalEvents == 5)
            let wrong = try await client.post("/v1/events?atomic=yes", ndjson: Self.fiveLanes)
            #expect(wrong.status == .badRequest)
            #expect(wrong.errorMessage.hasPrefix("atomic: must be true or false"))
        }
    }

    @Test(arguments: Backend.allCases)
    func oversizedBodiesAreRefusedWithNothingStored(backend: Backend) async throws {
        try await withRecorder(backend, configure: { $0.server.maxBodyBytes = 1000 }) { client, store, _ in
            let lines = Array(repeating: Self.fiveLanes, count: 5).flatMap { $0 }
            let response = try await client.post(ndjson: lines)
            #expect(response.status == .contentTooLarge)
            #expect(response.errorMessage.contains("server.maxBodyBytes"))
            #expect(try await store.stats().totalEvents == 0)
            let small = try await client.post(ndjson: [Self.fiveLanes[0]])
            #expect(small.status == .ok)
        }
    }

    @Test(arguments: Backend.allCases)
    func wrongContentTypeIsRefused(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let response = try await client.execute(uri: "/v1/events", method: .post, headers: [.contentType: "application/x-www-form-urlencoded"], body: ByteBuffer(string: Self.fiveLanes[0]))
            #expect(response.status == .unsupportedMediaType)
            #expect(response.errorMessage.hasPrefix("Content-Type: must be application/x-ndjson"))
            let none = try await client.execute(uri: "/v1/events", method: .post, body: ByteBuffer(string: Self.fiveLanes[0]))
            #expect(none.status == .unsupportedMediaType)
            // A body in another charset or an encoding this server does not decode is refused, not
            // parsed as it is.
            let latin1 = try await client.execute(
                uri: "/v1/events", method: .post, headers: [.contentType: "application/x-ndjson; charset=latin1"], body: ByteBuffer(string: Self.fiveLanes[0]))
            #expect(latin1.status == .unsupportedMediaType && latin1.errorMessage.hasPrefix("Content-Type: charset must be utf-8"), "\(latin1.text)")
            let brotli = try await client.execute(
                uri: "/v1/events", method: .post, headers: [.contentType: "application/x-ndjson", .contentEncoding: "br"], body: ByteBuffer(string: Self.fiveLanes[0]))
            #expect(brotli.status == .unsupportedMediaType && brotli.errorMessage.hasPrefix("Content-Encoding: must be gzip or identity"), "\(brotli.text)")
            let notGzip = try await client.execute(
                uri: "/v1/events", method: .post, headers: [.contentType: "application/x-ndjson", .contentEncoding: "gzip"], body: ByteBuffer(string: Self.fiveLanes[0]))
            #expect(notGzip.status == .badRequest && notGzip.errorMessage.hasPrefix("body: not valid gzip data"), "\(notGzip.text)")
            // gzip is decoded.
            var plain = ByteBuffer(string: Self.fiveLanes.joined(separator: "\n"))
            let gzipped = try plain.compress(with: .gzip())
            let zipped = try await client.execute(
                uri: "/v1/events", method: .post, headers: [.contentType: "application/x-ndjson; charset=UTF-8", .contentEncoding: "gzip"], body: gzipped)
            #expect(zipped.status == .ok && zipped.json["accepted"] == .number(JSONNumber(5)), "\(zipped.text)")
        }
    }

    @Test(arguments: Backend.allCases)
    func hostileBodiesNeverCrashOrStore(backend: Backend) async throws {
        try await withRecorder(backend) { client, store, _ in
            let bodies: [[UInt8]] = [
                [0xFF, 0xFE, 0x00, 0x7B], Array("{\"lane\":\"raw\",\"scopeId\":\"\u{00}\"".utf8),
                Array((String(repeating: "[", count: 100_000)).utf8), Array("{\"a\":1e999999}".utf8),
                Array("{\"lane\":\"raw\",\"scopeId\":\"s\",\"sourceTruthTime\":\"2026-01-27T14:32:15Z\",\"connectionId\":\"c\",\"sequence\":123456789012345678901234567890,\"bytes\":\"\"}".utf8),
                Array("\"\\ud800\"".utf8), [],
            ]
            for body in bodies {
                let response = try await client.execute(uri: "/v1/events", method: .post, headers: [.contentType: "application/x-ndjson"], body: ByteBuffer(bytes: body))
                #expect(response.status == .ok, "\(response.text)")
                #expect(response.json["accepted"] == .number(JSONNumber(0)))
            }
            #expect(try await store.stats().totalEvents == 0)
        }
    }
}
