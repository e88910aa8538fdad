import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import NovaCore
import NovaTestSupport
import Testing

@Suite struct QueryAPITests {
    /// The ordering vectors through HTTP, with small pages, following `Nova-Next-Cursor`.
    @Test(arguments: Backend.allCases)
    func orderingVectorsPagedOverHTTP(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let vectors = try Fixtures.vector("ordering.json")
            let lines = vectors["events"]!.arrayValue.map(\.text)
            let ingest = try await client.post(ndjson: lines)
            #expect(ingest.status == .ok)
            for member in vectors["expected"]!.objectMembers {
                let parts = member.key.split(separator: "/").map(String.init)
                let lane = parts[2] == "timeline" ? "" : "&lane=\(parts[2])"
                let want = member.value.arrayValue.map { $0.stringValue! }
                var got = [String]()
                var cursor: String?
                var pages = 0
                repeat {
                    let uri = "/v1/events?scope=\(enc(parts[0]))&\(everything)&timebase=\(parts[1])\(lane)&limit=4" + (cursor.map { "&after=\($0)" } ?? "")
                    let response = try await client.get(uri)
                    #expect(response.status == .ok, "\(response.text)")
                    got += response.lines.map { (try? JSONParser.parse($0))?["eventId"]?.stringValue ?? "?" }
                    cursor = response.headers[HTTPField.Name("Nova-Next-Cursor")!]
                    pages += 1
                } while cursor != nil && pages < 100
                #expect(got == want, "\(member.key)")
            }
        }
    }

    /// Pages end at `server.maxPageBytes` of event content, short of `limit`, with a cursor;
    /// following it reads everything once.
    @Test(arguments: Backend.allCases)
    func pagesOfLargeEventsEndAtTheByteBound(backend: Backend) async throws {
        try await withRecorder(backend, configure: { $0.server.maxPageBytes = 30_000 }) { client, _, _ in
            let events = (0..<10).map { i in
                let t = Timestamp(microseconds: 1_780_000_000_000_000 + Int64(i) * 1_000)
                return Event(scopeId: "s", sourceTruthTime: t, canonicalTruthTime: t, fields: .raw(connectionId: "c", sequence: Int64(i), bytes: [UInt8](repeating: 7, count: 10_000)))
            }
            try await client.ingest(events)
            var got = [String]()
            var cursor: String?
            var sizes = [Int]()
            repeat {
                let response = try await client.get("/v1/events?scope=s&\(everything)&limit=100" + (cursor.map { "&after=\($0)" } ?? ""))
                #expect(response.status == .ok, "\(response.text)")
                got += response.lines.map { (try? JSONParser.parse($0))?["eventId"]?.stringValue ?? "?" }
                sizes.append(response.lines.count)
                cursor = response.headers[HTTPField.Name("Nova-Next-Cursor")!]
            } while cursor != nil && sizes.count < 20
            #expect(got == events.map(\.eventId.hex))
            #expect(sizes.first == 3, "three events of 10 KB reach 30,000 bytes: \(sizes)")
        }
    }

    @Test(arguments: Backend.allCases)
    func filtersSelectTheirLane(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            _ = try await client.post(ndjson: IngestAPITests.fiveLanes + [
                #"{"lane":"raw","scopeId":"s","sourceTruthTime":"2026-01-27T14:32:15.000001Z","connectionId":"uart1","sequence":1,"bytes":""}"#,
            ])
            let raw = try await client.get("/v1/events?scope=s&\(everything)&connectionId=uart1")
            #expect(raw.lines.count == 1 && raw.text.contains("uart1"))
            let mixed = try await client.get("/v1/events?scope=s&\(everything)&lane=raw,ui&connectionId=uart0")
            #expect(mixed.lines.map { (try? JSONParser.parse($0))?["lane"]?.stringValue ?? "" } == ["raw", "ui"])
            let stray = try await client.get("/v1/events?scope=s&\(everything)&lane=ui&connectionId=uart0")
            #expect(stray.status == .badRequest)
            #expect(stray.errorMessage == "connectionId: filters the raw lane, which the lane parameter does not select")
        }
    }

    static let badQueries = [
        ("/v1/events?\(everything)", "scope: required"),
        ("/v1/events?scope=s&to=2026-01-01T00:00:00Z", "from: required"),
        ("/v1/events?scope=s&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from: must not be after to"),
        ("/v1/events?scope=s&from=yesterday&to=2026-01-01T00:00:00Z", "from: not an RFC 3339 timestamp"),
        ("/v1/events?scope=s&\(everything)&timebase=device", "timebase: must be canonical or source"),
        ("/v1/events?scope=s&\(everything)&lane=raw,video", "lane: unknown lane \"video\""),
        ("/v1/events?scope=s&\(everything)&limit=0", "limit: must be an integer from 1 to 100000"),
        ("/v1/events?scope=s&\(everything)&limit=100001", "limit: must be an integer from 1 to 100000"),
        ("/v1/events?scope=s&\(everything)&limit=ten", "limit: must be an integer"),
        ("/v1/events?scope=s&\(everything)&after=AAAA", "after: not a cursor issued by this API"),
        ("/v1/events?scope=s&\(everything)&after=%27%3B%20DROP%20TABLE%20rawEvents%3B--", "after: not a cursor issued by this API"),
        ("/v1/events?scope=s&scope=t&\(everything)", "scope: given more than once"),
        ("/v1/events?scope=s&\(everything)&sort=desc", "\"sort\": unknown parameter"),
        ("/v1/events?scope=s&\(everything)&" + (1...40).map { "p\($0)=1" }.joined(separator: "&"), "query string: at most 32 parameters"),
        ("/v1/stats?verbose=1", "\"verbose\": unknown parameter"),
        // Values no event can hold, or that are not percent-encoded UTF-8, are named, not
        // answered with nothing.
        ("/v1/events?scope=%FF&\(everything)", "scope: not valid percent-encoding"),
        ("/v1/events?scope=site%zz&\(everything)", "scope: not valid percent-encoding"),
        ("/v1/events?scope=site%0&\(everything)", "scope: not valid percent-encoding"),
        ("/v1/events?scope=site%00a&\(everything)", "scope: must not contain NUL"),
        ("/v1/events?scope=\(String(repeating: "s", count: 257))&\(everything)", "scope: must be at most 256 bytes"),
        ("/v1/events?scope=s&\(everything)&viewId=%FF", "viewId: not valid percent-encoding"),
        ("/v1/events?scope=s&\(everything)&viewId=\(String(repeating: "%C3%A9", count: 129))", "viewId: must be at most 256 bytes"),
        ("/v1/events?sc%ZZope=s&\(everything)", "a parameter name: not valid percent-encoding"),
    ]

    @Test(arguments: Backend.allCases)
    func badQueriesNameTheParameter(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            for (uri, expected) in Self.badQueries {
                let response = try await client.get(uri)
                #expect(response.status == .badRequest, "\(uri)")
                #expect(response.errorMessage.hasPrefix(expected), "\(uri): \(response.errorMessage)")
            }
        }
    }

    @Test(arguments: Backend.allCases)
    func aCursorOfAnotherQueryIsRefused(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            _ = try await client.post(ndjson: IngestAPITests.fiveLanes)
            let first = try await client.get("/v1/events?scope=s&\(everything)&limit=2")
            let cursor = try #require(first.headers[HTTPField.Name("Nova-Next-Cursor")!])
            let other = try await client.get("/v1/events?scope=s&\(everything)&limit=2&lane=raw&after=\(cursor)")
            #expect(other.status == .badRequest)
            #expect(other.errorMessage.hasPrefix("after: belongs to a different query"))
            let hostile = try await client.get("/v1/events?scope=\(enc("s' OR '1'='1"))&\(everything)")
            #expect(hostile.status == .ok && hostile.lines.isEmpty)
        }
    }

    @Test(arguments: Backend.allCases)
    func statsHealthAndReadiness(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            _ = try await client.post(ndjson: IngestAPITests.fiveLanes)
            let stats = try await client.get("/v1/stats")
            #expect(stats.json["totalEvents"] == .number(JSONNumber(5)))
            #expect(stats.json["lanes"]?.arrayValue.count == 5)
            #expect(try await client.get("/healthz").status == .ok)
            #expect(try await client.get("/readyz").status == .ok)
            let metrics = try await client.get("/metrics")
            #expect(metrics.text.contains("nova_ingest_events_total"))
            #expect(metrics.text.contains("nova_query_duration_seconds"))

            // A known path asked with another method: 405 naming what it takes; an unknown path: 404.
            let put = try await client.execute(uri: "/v1/events", method: .put)
            #expect(put.status == .methodNotAllowed && put.headers[.allow] == "GET, POST", "\(put.text)")
            #expect(put.errorMessage == "method: /v1/events takes GET, POST, not PUT", "\(put.text)")
            #expect(try await client.execute(uri: "/v1/stats", method: .delete).status == .methodNotAllowed)
            #expect(try await client.execute(uri: "/v1/sync/batches", method: .get).headers[.allow] == "POST")
            #expect(try await client.get("/v1/nothing").status == .notFound)
        }
    }
}

@Suite struct AuthTests {
    static let readToken = "read-secret-1"
    static let ingestToken = "ingest-secret-2"

    func configure(_ config: inout NovaConfiguration) {
        config.server.tokens = [
            .init(sha256: TokenHash.sha256Hex(Self.readToken), roles: [.read], siteId: nil),
            .init(sha256: TokenHash.sha256Hex(Self.ingestToken), roles: [.ingest], siteId: nil),
        ]
    }

    @Test(arguments: Backend.allCases)
    func rolesAreEnforced(backend: Backend) async throws {
        try await withRecorder(backend, configure: configure) { client, _, _ in
            let query = "/v1/events?scope=s&\(everything)"
            let anonymous = try await client.get(query)
            #expect(anonymous.status == .unauthorized)
            #expect(anonymous.headers[.wwwAuthenticate] == "Bearer")
            #expect(try await client.get(query, headers: [.authorization: "Bearer nope"]).status == .unauthorized)
            #expect(try await client.get(query, headers: [.authorization: "Bearer \(Self.readToken)"]).status == .ok)
            #expect(try await client.get(query, headers: [.authorization: "bearer \(Self.readToken)"]).status == .ok, "the scheme is case-insensitive")
            #expect(try await client.get(query, headers: [.authorization: "Bearer \(Self.ingestToken)"]).status == .forbidden)
            let writeWithRead = try await client.post(ndjson: IngestAPITests.fiveLanes, headers: [.authorization: "Bearer \(Self.readToken)"])
            #expect(writeWithRead.status == .forbidden)
            #expect(writeWithRead.errorMessage == "Authorization: this token lacks the ingest role")
            let write = try await client.post(ndjson: IngestAPITests.fiveLanes, headers: [.authorization: "Bearer \(Self.ingestToken)"])
            #expect(write.status == .ok)
            #expect(try await client.get("/healthz").status == .ok)
            #expect(try await client.get("/metrics").status == .ok)
            // The stream endpoint asked without an upgrade: the role first, then what it is.
            #expect(try await client.get("/v1/stream?scope=s&mode=live").status == .unauthorized)
            let plain = try await client.get("/v1/stream?scope=s&mode=live", headers: [.authorization: "Bearer \(Self.readToken)"])
            #expect(plain.status == .upgradeRequired && plain.errorMessage.hasPrefix("Upgrade: /v1/stream is a WebSocket endpoint"), "\(plain.text)")
        }
    }
}
