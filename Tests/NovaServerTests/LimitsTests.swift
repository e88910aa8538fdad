import AsyncHTTPClient
import Foundation
import HTTPTypes
import HummingbirdTesting
import HummingbirdWSClient
import NIOCore
import NovaCore
import NovaServer
import NovaTestSupport
import Testing

/// The configurable limits of `server.*`, over real HTTP and WebSocket on loopback: each refusal
/// names its setting and leaves everything else as it was.
@Suite struct LimitsTests {
    static func lines(_ events: [Event]) -> [String] {
        events.map { e in
            var out = [UInt8]()
            e.writeJSON(into: &out)
            return String(decoding: out, as: UTF8.self)
        }
    }

    @Test(arguments: Backend.allCases)
    func batchesOfTooManyEventsAreRefusedWhole(backend: Backend) async throws {
        try await withRecorder(backend, configure: { $0.server.maxEventsPerBatch = 10 }) { client, store, _ in
            let refused = try await client.post(ndjson: Self.lines(StreamTests.frames(11)))
            #expect(refused.status == .contentTooLarge)
            #expect(refused.errorMessage == "body: 11 events exceeds the limit of 10 per batch (server.maxEventsPerBatch); nothing stored")
            #expect(try await store.stats().totalEvents == 0)
            #expect(try await client.post(ndjson: Self.lines(StreamTests.frames(10))).status == .ok)
            #expect(try await store.stats().totalEvents == 10)
        }
    }

    @Test func queriesOverALongerRangeAreRefused() async throws {
        try await withRecorder(.sqlite, configure: { $0.server.maxQueryRange = "1 hours" }) { client, _, _ in
            let long = try await client.get("/v1/events?scope=s&from=2026-05-01T00:00:00Z&to=2026-05-01T01:00:00.000001Z")
            #expect(long.status == .badRequest)
            #expect(long.errorMessage == "to: the range from..to may span at most 1 hours (server.maxQueryRange); page through shorter ranges")
            #expect(try await client.get("/v1/events?scope=s&from=2026-05-01T00:00:00Z&to=2026-05-01T01:00:00Z").status == .ok)
        }
    }

    /// A token holds at most `maxStreamsPerToken` streams: one more gets an `error` naming the
    /// setting and a 1008 close, while another token and the open streams are untouched; a
    /// closed stream frees its place.
    @Test func streamsPerTokenAreBounded() async throws {
        let other = "another-read-token"
        try await withRecorder(.sqlite, configure: { config in
            AuthTests().configure(&config)
            config.server.tokens.append(.init(sha256: TokenHash.sha256Hex(other), roles: [.read]))
            config.server.maxStreamsPerToken = 2
        }) { client, _, metrics in
            let port = try #require(client.port)
            let open = TestCounter()
            let done = TestCounter()
            var refusals = 0
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        try await withStream(port: port, query: "scope=s&mode=live", token: AuthTests.readToken) { stream in
                            try await stream.wait(forType: "caughtUp")
                            open.add()
                            while done.value == 0 { try await Task.sleep(for: .milliseconds(10)) }
                            try await stream.wait(forEvents: 3)
                        }
                    }
                }
                while open.value < 2 { try await Task.sleep(for: .milliseconds(10)) }
                // The test client (hummingbird-websocket's) now and then loses the frames that
                // arrive in the same read as the upgrade's 101 answer, which a refusal's error and
                // close always follow at once; so a refusal whose frames it lost is tried again
                // (seen about once in five runs of this suite beside two others).
                var close: WebSocketCloseFrame?
                for attempt in 1...3 {
                    refusals += 1
                    do {
                        close = try await withStream(port: port, query: "scope=s&mode=live", token: AuthTests.readToken) { stream in
                            let got = try await stream.wait(forType: "error", timeout: .seconds(3))
                            #expect(got.last?.json["error"]?.stringValue == "too many streams: this token has 2 open (server.maxStreamsPerToken); close one first")
                            try await stream.waitUntilClosedByServer()
                        }
                        break
                    } catch let error as StreamTestError where error.messagesSeen == 0 && attempt < 3 {
                        continue
                    }
                }
                #expect(close?.closeCode == .policyViolation)
                try await withStream(port: port, query: "scope=s&mode=live", token: other) { stream in
                    try await stream.wait(forType: "caughtUp")
                }
                let posted = try await client.post(ndjson: Self.lines(StreamTests.frames(3)), headers: [.authorization: "Bearer \(AuthTests.ingestToken)"])
                #expect(posted.status == .ok)
                done.add()
                try await group.waitForAll()
            }
            #expect(String(decoding: metrics.exposition(), as: UTF8.self).contains("nova_stream_refused_total \(refusals)"))
            // Both closed: the token may open streams again, once the server has seen the closes
            // (its stream handlers notice a close within 250 ms).
            let deadline = ContinuousClock.now + .seconds(10)
            while true {
                do {
                    try await withStream(port: port, query: "scope=s&mode=live", token: AuthTests.readToken) { stream in
                        try await stream.wait(forType: "caughtUp", timeout: .seconds(3))
                    }
                    break
                } catch where ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
        }
    }

    @Test func streamMessagesOverTheLimitCloseWith1009() async throws {
        try await withRecorder(.sqlite, configure: { $0.server.maxStreamMessageBytes = 256 }) { client, _, _ in
            let port = try #require(client.port)
            let close = try await withStream(port: port, query: "scope=s&mode=live") { stream in
                try await stream.wait(forType: "caughtUp")
                try await stream.send(#"{"type":"pause","padding":"\#(String(repeating: "x", count: 300))"}"#)
                let got = try await stream.wait(forType: "error")
                #expect(got.last?.json["error"]?.stringValue?.contains("larger than 256 bytes (server.maxStreamMessageBytes)") == true)
                try await stream.waitUntilClosedByServer()
            }
            #expect(close?.closeCode == .messageTooLarge)
        }
    }

    /// A client that stops sending mid-request is disconnected after `idleTimeoutSeconds`,
    /// long before its own deadline; a LIVE stream that only listens is not (it has its pings).
    @Test func idleConnectionsAreClosedButQuietStreamsAreNot() async throws {
        try await withRecorder(.sqlite, configure: { $0.server.idleTimeoutSeconds = 1 }) { client, _, _ in
            let port = try #require(client.port)
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/events")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-ndjson")
            // Declares 1000 bytes, sends 10, then nothing.
            let (body, continuation) = AsyncStream<ByteBuffer>.makeStream()
            continuation.yield(ByteBuffer(string: "{\"lane\":\"r"))
            request.body = .stream(body, length: .known(Int64(1000)))
            let started = ContinuousClock.now
            do {
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
                Issue.record("a stalled request was answered: \(response.status)")
            } catch {
                #expect(ContinuousClock.now - started < .seconds(45), "closed by the server, not by the client's deadline: \(error)")
            }
            continuation.finish()

            try await withStream(port: port, query: "scope=s&mode=live") { stream in
                try await stream.wait(forType: "caughtUp")
                try await Task.sleep(for: .seconds(3))
                let events = StreamTests.frames(2)
                try await client.ingest(events)
                try await stream.wait(forEvents: 2)
            }
        }
    }
}
