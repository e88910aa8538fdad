import AsyncHTTPClient
import CompressNIO
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import NovaCore
import NovaServer
import NovaTestSupport
import Testing

/// The hub's sync routes over real loopback HTTP on both stores: watermarks, replays and gaps,
/// tokens bound to sites, malformed batches refused whole, overload answered with 503.
@Suite(.timeLimit(.minutes(2))) struct SyncAPITests {
    static let siteToken = "sync-token-of-site-a"
    static let readToken = "a-read-token"

    static func events(_ n: Int, offset: Int = 0) -> [CommittedEvent] {
        (0..<n).map { k in
            let seq = offset + k
            let event = Event(
                scopeId: "s", sourceTruthTime: Timestamp(microseconds: 1_780_000_000_000_000 + Int64(seq) * 1_000),
                canonicalTruthTime: Timestamp(microseconds: 1_780_000_000_000_000 + Int64(seq) * 1_000),
                fields: .raw(connectionId: "c", sequence: Int64(seq), bytes: [UInt8(seq & 255)]))
            return CommittedEvent(seq: Int64(seq + 1), event: event)
        }
    }

    static func batch(_ events: [CommittedEvent], site: String = "site-a", kind: SyncBatch.Kind = .outbox, pendingFrom: Timestamp? = nil) -> SyncBatch {
        SyncBatch(
            kind: kind, siteId: site, storeId: "5a000000-0000-4000-8000-000000000001", firstSeq: events.first?.seq ?? 0, lastSeq: events.last?.seq ?? 0,
            pendingFrom: pendingFrom, outboxSize: 0, events: events)
    }

    static func body(_ batch: SyncBatch, gzip: Bool = true) throws -> (ByteBuffer, HTTPFields) {
        var buffer = ByteBuffer(bytes: SyncBatchCodec.encode(batch))
        var headers: HTTPFields = [.contentType: SyncBatchCodec.contentType]
        if gzip {
            buffer = try buffer.compress(with: .gzip())
            headers[.contentEncoding] = "gzip"
        }
        return (buffer, headers)
    }

    @Test(arguments: Backend.allCases)
    func watermarksAnswerReplaysAndGaps(backend: Backend) async throws {
        try await withRecorder(backend) { client, store, _ in
            let events = Self.events(30)
            func ship(_ b: SyncBatch, gzip: Bool = true) async throws -> TestResponse {
                let (body, headers) = try Self.body(b, gzip: gzip)
                return try await client.execute(uri: "/v1/sync/batches", method: .post, headers: headers, body: body)
            }
            let first = try await ship(Self.batch(Array(events[0..<10])))
            #expect(first.status == .ok, "\(first.text)")
            #expect(first.json["ackedSeq"] == .number(JSONNumber(10)))
            #expect(first.json["accepted"] == .number(JSONNumber(10)))
            #expect(first.json["lastEventId"] == .string(events[9].event.eventId.hex))

            let replay = try await ship(Self.batch(Array(events[0..<10])), gzip: false)
            #expect(replay.status == .ok)
            #expect(replay.json["replay"] == .bool(true))
            #expect(replay.json["ackedSeq"] == .number(JSONNumber(10)))

            let gap = try await ship(Self.batch(Array(events[20..<30])))
            #expect(gap.status == .conflict)
            #expect(gap.json["ackedSeq"] == .number(JSONNumber(10)))
            #expect(gap.errorMessage.contains("resume from 11"), "\(gap.text)")

            let watermark = try await client.get("/v1/sync/watermark?siteId=site-a&storeId=5a000000-0000-4000-8000-000000000001")
            #expect(watermark.json["ackedSeq"] == .number(JSONNumber(10)))
            let unknown = try await client.get("/v1/sync/watermark?siteId=site-a&storeId=51000000-0000-4000-8000-0000000000ff")
            #expect(unknown.json["ackedSeq"] == .number(JSONNumber(0)))
            #expect(unknown.json["lastEventId"] == .null)
            let capitals = try await client.get("/v1/sync/watermark?siteId=site-a&storeId=5A000000-0000-4000-8000-000000000001")
            #expect(capitals.json["ackedSeq"] == .number(JSONNumber(10)), "the same store in capitals")
            let notUUID = try await client.get("/v1/sync/watermark?siteId=site-a&storeId=edge-1")
            #expect(notUUID.status == .badRequest && notUUID.errorMessage.hasPrefix("storeId: must be a UUID"), "\(notUUID.text)")

            let claim = Timestamp(microseconds: 1_790_000_000_000_000)
            let heartbeat = SyncBatch(kind: .heartbeat, siteId: "site-a", storeId: "5a000000-0000-4000-8000-000000000001", firstSeq: 0, lastSeq: 10, pendingFrom: claim, outboxSize: 0, events: [])
            #expect(try await ship(heartbeat).status == .ok)
            let sites = try await client.get("/v1/sync/sites").json
            guard case .array(let list)? = sites["sites"], let site = list.first else { Issue.record("\(sites)"); return }
            #expect(site["completeThrough"] == .string(claim.rfc3339))
            #expect(site["batchesApplied"] == .number(JSONNumber(1)))
            #expect(site["eventsApplied"] == .number(JSONNumber(10)))
            // The metrics count as the endpoint does: the heartbeat is not an applied batch.
            let counters = try await client.get("/metrics").text
            #expect(counters.contains(#"nova_sync_applied_batches_total{site="site-a"} 1"#), "\(counters)")
            #expect(counters.contains(#"nova_sync_applied_events_total{site="site-a"} 10"#))
            // A migration's checkpoint site reports no completeness and holds nothing back.
            #expect(try await ship(Self.batch(Array(events[0..<2]), site: SyncSite.migrationSiteId)).status == .ok)
            #expect(try await store.stats().totalEvents == 10)
            let answer = try await client.get("/v1/events?scope=s&\(everything)")
            #expect(answer.headers[HTTPField.Name("Nova-Complete-Through")!] == claim.rfc3339, "queries say up to when the data is complete")

            // Per scope: a second site with scope "late" pending from long ago holds back that
            // scope only; site-a, reporting nothing per scope, holds back every scope by its claim.
            let old = Timestamp(microseconds: 1_700_000_000_000_000)
            let later = Timestamp(microseconds: 1_795_000_000_000_000)
            let siteB = SyncBatch(
                kind: .heartbeat, siteId: "site-b", storeId: "51000000-0000-4000-8000-00000000000b", firstSeq: 0, lastSeq: 0,
                pending: PendingFrom(site: old, scopes: ["late": old], otherScopes: later), outboxSize: 0, events: [])
            #expect(try await ship(siteB).status == .ok)
            try await Task.sleep(for: .milliseconds(1_100))  // the hub reads the sites at most once a second
            let header = HTTPField.Name("Nova-Complete-Through")!
            #expect(try await client.get("/v1/events?scope=late&\(everything)").headers[header] == old.rfc3339)
            #expect(try await client.get("/v1/events?scope=s&\(everything)").headers[header] == claim.rfc3339)

            // Each site's lag is computed at the scrape: site-b's claim is years old.
            func siteLag(_ site: String) async throws -> Double? {
                let exposition = try await client.get("/metrics").text
                let line = exposition.split(separator: "\n").first { $0.hasPrefix("nova_sync_site_lag_seconds{site=\"\(site)\"}") }
                return line.flatMap { $0.split(separator: " ").last.flatMap { Double($0) } }
            }
            #expect(try await siteLag("site-b") ?? 0 > 86_400 * 365)
            // Retired for good, site-b is forgotten: it no longer holds back completeness, and
            // leaves the sites and the metrics; its events (none here) would stay.
            let forget = try await client.execute(uri: "/v1/sync/sites/site-b", method: .delete)
            #expect(forget.status == .ok, "\(forget.text)")
            #expect(forget.json["storesForgotten"] == .number(JSONNumber(1)))
            #expect(try await client.get("/v1/events?scope=late&\(everything)").headers[header] == claim.rfc3339)
            #expect(try await store.syncSites().map(\.siteId) == [SyncSite.migrationSiteId, "site-a"])
            #expect(try await siteLag("site-b") == nil)
            #expect(try await siteLag("site-a") != nil)
            let again = try await client.execute(uri: "/v1/sync/sites/site-b", method: .delete)
            #expect(again.status == .notFound)
            #expect(again.errorMessage.contains("siteId: no site \"site-b\""), "\(again.text)")
            // The site's id as sent in the path, percent-encoded, is decoded first.
            let encoded = try await client.execute(uri: "/v1/sync/sites/no%20such%2Fsite", method: .delete)
            #expect(encoded.status == .notFound && encoded.errorMessage.contains(#"no site "no such/site""#), "\(encoded.text)")
            let garbled = try await client.execute(uri: "/v1/sync/sites/site%ZZ", method: .delete)
            #expect(garbled.status == .badRequest && garbled.errorMessage.hasPrefix("siteId: "), "\(garbled.text)")
            // A site still shipping comes back with its next batch (a heartbeat here).
            #expect(try await ship(siteB).status == .ok)
            #expect(try await store.syncSites().map(\.siteId) == [SyncSite.migrationSiteId, "site-a", "site-b"])
            #expect(try await store.stats().totalEvents == 10)

            // A claim in the future (an edge's clock far ahead) is capped at the hub's clock: the
            // hub never vouches for time nobody has recorded yet.
            let future = Timestamp(microseconds: 253_402_300_799_000_000)
            let ahead = SyncBatch(
                kind: .heartbeat, siteId: "site-c", storeId: "51000000-0000-4000-8000-00000000000c", firstSeq: 0, lastSeq: 0,
                pending: PendingFrom(site: future, scopes: ["c": future], otherScopes: future), outboxSize: 0, events: [])
            let shippedAt = Timestamp.now()
            #expect(try await ship(ahead).status == .ok)
            let siteC = try #require(try await store.syncSites().first { $0.siteId == "site-c" })
            let capped = try #require(siteC.completeThrough)
            #expect(capped >= shippedAt && capped <= Timestamp.now(), "completeThrough \(capped.rfc3339)")

            // A hub has no shipper of its own.
            let status = try await client.get("/v1/sync/status")
            #expect(status.status == .notFound)
            #expect(status.errorMessage.contains("sync.enabled"))
        }
    }

    @Test(arguments: Backend.allCases)
    func syncedEventsReachTheHubsLiveStreams(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let port = try #require(client.port)
            let events = Self.events(20)
            try await withStream(port: port, query: "scope=s&mode=live") { stream in
                _ = try await stream.wait(forType: "caughtUp")
                let (body, headers) = try Self.body(Self.batch(events))
                let response = try await client.execute(uri: "/v1/sync/batches", method: .post, headers: headers, body: body)
                #expect(response.status == .ok)
                let got = try await stream.wait(forType: "event", count: 20).filter { $0.type == "event" }
                #expect(got.compactMap(\.eventId) == events.map(\.event.eventId.hex))
            }
        }
    }

    @Test(arguments: Backend.allCases)
    func malformedBatchesAreRefusedWholeAndApplyNothing(backend: Backend) async throws {
        try await withRecorder(backend) { client, store, _ in
            // Version 1 (NDJSON), which a hub still reads from older edges, edited as text.
            let good = SyncBatchCodec.encode(Self.batch(Self.events(5)), version: 1)
            let text = String(decoding: good, as: UTF8.self)
            let lines = text.split(separator: "\n").map(String.init)
            func post(_ body: String, contentType: String = SyncBatchCodec.ndjsonContentType, encoding: String? = nil) async throws -> TestResponse {
                try await post(Array(body.utf8), contentType: contentType, encoding: encoding)
            }
            func post(_ body: [UInt8], contentType: String = SyncBatchCodec.contentType, encoding: String? = nil) async throws -> TestResponse {
                var headers: HTTPFields = [.contentType: contentType]
                if let encoding { headers[.contentEncoding] = encoding }
                return try await client.execute(uri: "/v1/sync/batches", method: .post, headers: headers, body: ByteBuffer(bytes: body))
            }
            let binary = SyncBatchCodec.encode(Self.batch(Self.events(5)))
            var tampered = binary
            tampered[tampered.count - 1] ^= 1  // the last raw frame's byte
            let cases: [(String, HTTPResponse.Status, String, TestResponse)] = [
                ("wrong content type", .unsupportedMediaType, "Content-Type", try await post(text, contentType: "application/json")),
                ("version 1 sent as 2", .badRequest, "header.version: 1, but the Content-Type is that of version 2", try await post(good)),
                ("binary cut short", .badRequest, "events[4]: its pre-image", try await post(Array(binary.dropLast(2)))),
                ("binary padded", .badRequest, "body: 1 bytes follow the 5 events", try await post(binary + [0])),
                ("binary tampered", .badRequest, "events[4].event.eventId: is not the SHA-256", try await post(tampered)),
                ("unknown encoding", .unsupportedMediaType, "Content-Encoding", try await post(text, encoding: "br")),
                ("not gzip", .badRequest, "not valid gzip", try await post(text, encoding: "gzip")),
                ("truncated", .badRequest, "announces 5 events but 4 follow", try await post(lines.dropLast().joined(separator: "\n"))),
                ("cut mid-line", .badRequest, "events[", try await post(String(text.dropLast(40)))),
                ("newer version", .badRequest, "header.version: 3 is not supported", try await post(text.replacingOccurrences(of: #""version":1"#, with: #""version":3"#))),
                ("firstSeq 0", .badRequest, "firstSeq/lastSeq", try await post(text.replacingOccurrences(of: #""firstSeq":1"#, with: #""firstSeq":0"#))),
                ("absurd lastSeq", .badRequest, "firstSeq/lastSeq", try await post(text.replacingOccurrences(of: #""lastSeq":5"#, with: #""lastSeq":9223372036854775807"#))),
                ("seq outside the batch", .badRequest, "events[4].seq", try await post(text.replacingOccurrences(of: #"{"seq":5,"#, with: #"{"seq":7,"#))),
                ("tampered event", .badRequest, "eventId", try await post(text.replacingOccurrences(of: #""connectionId":"c""#, with: #""connectionId":"d""#))),
                ("no canonical time", .badRequest, "canonicalTruthTime", try await post(text.replacingOccurrences(of: #","canonicalTruthTime":"2026-05-28T20:26:40.000000Z""#, with: ""))),
                ("storeId not a UUID", .badRequest, "header.storeId: must be a UUID",
                 try await post(text.replacingOccurrences(of: "5a000000-0000-4000-8000-000000000001", with: "edge-1"))),
                ("not JSON", .badRequest, "header: invalid JSON", try await post("hello\n")),
                ("empty", .badRequest, "empty", try await post("")),
                ("a stray per-scope claim", .badRequest, "header.otherScopesPendingFrom",
                 try await post(text.replacingOccurrences(of: #""outboxSize""#, with: #""otherScopesPendingFrom":"x","outboxSize""#))),
                ("a repair with positions", .badRequest, "must be 0 in a repair batch",
                 try await post(text.replacingOccurrences(of: #""kind":"outbox""#, with: #""kind":"repair""#)
                    .replacingOccurrences(of: #""firstSeq":1,"lastSeq":5"#, with: #""firstSeq":0,"lastSeq":0"#))),
            ]
            for (name, status, message, response) in cases {
                #expect(response.status == status, "\(name): \(response.status) \(response.text)")
                #expect(response.errorMessage.contains(message), "\(name): \(response.text)")
            }
            #expect(try await store.stats().totalEvents == 0, "nothing of a refused batch is applied")
            #expect(try await store.syncSites().isEmpty)
            #expect(try await post(text).status == .ok, "the same batch, intact, is applied")
            #expect(try await post(binary).json["replay"] == .bool(true), "and in version 2 it is a replay")
        }
    }

    @Test func tokensBindShipmentsToTheirSite() async throws {
        try await withRecorder(configure: { config in
            config.server.tokens = [
                .init(sha256: TokenHash.sha256Hex(Self.siteToken), roles: [.sync], siteId: "site-a"),
                .init(sha256: TokenHash.sha256Hex(Self.readToken), roles: [.read], siteId: nil),
            ]
        }) { client, store, _ in
            func ship(_ b: SyncBatch, token: String?) async throws -> TestResponse {
                var (body, headers) = try Self.body(b)
                if let token { headers[.authorization] = "Bearer \(token)" }
                return try await client.execute(uri: "/v1/sync/batches", method: .post, headers: headers, body: body)
            }
            let events = Self.events(5)
            #expect(try await ship(Self.batch(events), token: nil).status == .unauthorized)
            let other = try await ship(Self.batch(events, site: "site-b"), token: Self.siteToken)
            #expect(other.status == .forbidden)
            #expect(other.errorMessage.contains("ships for site \"site-a\", not \"site-b\""), "\(other.text)")
            let read = try await ship(Self.batch(events), token: Self.readToken)
            #expect(read.status == .forbidden)
            #expect(try await store.stats().totalEvents == 0)
            #expect(try await ship(Self.batch(events), token: Self.siteToken).status == .ok)

            let bearer: (String) -> HTTPFields = { [.authorization: "Bearer \($0)"] }
            #expect(try await client.get("/v1/sync/watermark?siteId=site-b&storeId=51000000-0000-4000-8000-000000000099", headers: bearer(Self.siteToken)).status == .forbidden)
            #expect(try await client.get("/v1/sync/watermark?siteId=site-a&storeId=51000000-0000-4000-8000-000000000099", headers: bearer(Self.siteToken)).status == .ok)
            #expect(try await client.get("/v1/sync/watermark?siteId=site-a&storeId=51000000-0000-4000-8000-000000000099", headers: bearer(Self.readToken)).status == .forbidden)
            // A site token reads the digests and stats that repair compares, and nothing else.
            #expect(try await client.get("/v1/digests?scope=s&\(everything)&bucket=1m", headers: bearer(Self.siteToken)).status == .ok)
            #expect(try await client.get("/v1/stats", headers: bearer(Self.siteToken)).status == .ok)
            #expect(try await client.get("/v1/events?scope=s&\(everything)", headers: bearer(Self.siteToken)).status == .forbidden)
            #expect(try await client.get("/v1/sync/sites", headers: bearer(Self.readToken)).status == .ok)
            // Forgetting a site takes the admin role.
            for token in [Self.readToken, Self.siteToken] {
                #expect(try await client.execute(uri: "/v1/sync/sites/site-a", method: .delete, headers: bearer(token)).status == .forbidden)
            }
            #expect(try await store.syncSites().map(\.siteId) == ["site-a"])
        }
    }

    @Test func overloadIsAnswered503WithRetryAfter() async throws {
        // Concurrent requests need several connections: the test client has one.
        try await withRecorder(configure: { $0.sync.maxConcurrentBatches = 1 }) { client, _, _ in
            let url = "http://127.0.0.1:\(client.port!)/v1/sync/batches"
            // Its own client, shut down before the server stops: a shared client's idle
            // keep-alive connections were seen to hold the test server's shutdown for minutes.
            let http = HTTPClient(eventLoopGroupProvider: .singleton)

            var statuses = [HTTPResponse.Status: Int]()
            var retryAfter: String?
            for round in 0..<5 where statuses[.serviceUnavailable] == nil {
                try await withThrowingTaskGroup(of: (HTTPResponse.Status, String?).self) { group in
                    for k in 0..<8 {
                        let events = Self.events(3_000, offset: (round * 8 + k) * 3_000)
                        let b = SyncBatch(siteId: "site-\(k)", storeId: "51000000-0000-4000-8000-\(String(format: "%012d", round))", firstSeq: 1, lastSeq: 3_000, pendingFrom: nil, outboxSize: 0,
                                          events: events.enumerated().map { CommittedEvent(seq: Int64($0.offset + 1), event: $0.element.event) })
                        let (body, _) = try Self.body(b, gzip: false)
                        group.addTask {
                            var request = HTTPClientRequest(url: url)
                            request.method = .POST
                            request.headers.add(name: "Content-Type", value: SyncBatchCodec.contentType)
                            request.body = .bytes(body)
                            let r = try await http.execute(request, timeout: .seconds(60))
                            _ = try await r.body.collect(upTo: 1 << 20)
                            return (HTTPResponse.Status(code: Int(r.status.code)), r.headers.first(name: "Retry-After"))
                        }
                    }
                    for try await (status, retry) in group {
                        statuses[status, default: 0] += 1
                        if status == .serviceUnavailable { retryAfter = retry }
                    }
                }
            }
            try await http.shutdown()
            #expect(statuses[.serviceUnavailable, default: 0] > 0, "\(statuses)")
            #expect(retryAfter == "1")
            #expect(Set(statuses.keys).isSubset(of: [.ok, .serviceUnavailable]), "\(statuses)")
        }
    }
}
