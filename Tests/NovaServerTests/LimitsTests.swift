import AsyncHTTPClient
import Foundation
import HTTPTypes
import HummingbirdTesting
import HummingbirdWSClient
import NIOCore
import NIOWebSocket
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

    /// Messages that a client library would never send are refused with their own close code
    /// and an `error` naming the rule: invalid UTF-8 (1007), a continuation with nothing to
    /// continue and a new message inside another (1002), and a message over the limit in
    /// several frames (1009).
    @Test func malformedStreamMessagesAreNamedAndClosedWithTheirCode() async throws {
        try await withRecorder(.sqlite, configure: { $0.server.maxStreamMessageBytes = 256 }) { client, _, _ in
            let port = try #require(client.port)
            let pause = Array(#"{"type":"pause"}"#.utf8)
            let cases: [(String, WebSocketErrorCode, [(WebSocketOpcode, Bool, [UInt8])])] = [
                ("message: not valid UTF-8", .dataInconsistentWithMessage, [(.text, true, [0x7b, 0xff, 0x7d])]),
                ("continuation frame with no message", .protocolError, [(.continuation, true, pause)]),
                ("a new message began", .protocolError, [(.text, false, Array(pause[..<4])), (.text, true, pause)]),
                ("larger than 256 bytes", .messageTooLarge, [(.text, false, Array(repeating: 0x20, count: 200)), (.continuation, true, Array(repeating: 0x20, count: 200))]),
                // One frame over the socket's frame limit (64 KiB here): the decoder refuses it whole.
                ("frame: larger than 65536 bytes", .messageTooLarge, [(.text, true, Array(repeating: 0x20, count: 70_000))]),
                // Fragmented but whole: read as one message (here one of an unknown type).
                ("type: must be pause", .policyViolation, [(.text, false, Array(#"{"type":"#.utf8)), (.continuation, true, Array(#""rewind"}"#.utf8))]),
            ]
            for (message, code, frames) in cases {
                let close = try await withStream(port: port, query: "scope=s&mode=live") { stream in
                    try await stream.wait(forType: "caughtUp")
                    for (opcode, fin, bytes) in frames { try await stream.send(frame: opcode, fin: fin, bytes) }
                    let error = try await stream.wait(forType: "error").last?.json["error"]?.stringValue ?? ""
                    #expect(error.contains(message), "\(error)")
                    try await stream.waitUntilClosedByServer()
                }
                #expect(close?.closeCode == code, "\(message)")
            }
        }
    }

    /// A client frame without a mask (RFC 6455 requires one) ends the stream with an `error`
    /// naming the rule and 1002. Sent over plain TCP: client libraries always mask.
    @Test func unmaskedClientFramesCloseWith1002() async throws {
        try await withRecorder(.sqlite) { client, _, _ in
            let port = try #require(client.port)
            let upgrade = "GET /v1/stream?scope=s&mode=live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            let pause = Array(#"{"type":"pause"}"#.utf8)
            let received = try await Self.exchange(port: port, sending: Array(upgrade.utf8), thenOn: "caughtUp", sending: [0x81, UInt8(pause.count)] + pause).received
            let text = String(decoding: received, as: UTF8.self)
            #expect(text.contains("a client's frames must be masked (RFC 6455 section 5.1)"), "\(text)")
            let close = try #require(received.lastIndex(of: 0x88))
            #expect(Array(received[close...].prefix(4)) == [0x88, 0x02 + UInt8(received.count - close - 4), 0x03, 0xea], "a close frame with 1002: \(Array(received[close...]))")
        }
    }

    /// Connects over plain TCP, sends `first`, and once what it received contains `marker`,
    /// sends `then`; returns everything received until the server closed (at most 20 s, on a
    /// thread of its own) and the seconds that took from the first send.
    static func exchange(
        port: Int, sending first: [UInt8], thenOn marker: String? = nil, sending then: [UInt8] = []
    ) async throws -> (received: [UInt8], seconds: Double) {
        try await withCheckedThrowingContinuation { done in
            Thread.detachNewThread {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                defer { close(fd) }
                var address = sockaddr_in()
                address.sin_family = sa_family_t(AF_INET)
                address.sin_port = in_port_t(UInt16(port).bigEndian)
                address.sin_addr.s_addr = inet_addr("127.0.0.1")
                let connected = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                guard connected == 0 else { return done.resume(throwing: StreamTestError("connect failed: \(errno)")) }
                if !first.isEmpty { _ = send(fd, first, first.count, 0) }
                var limit = timeval(tv_sec: 20, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
                let started = ContinuousClock.now
                var received = [UInt8]()
                var sent = marker == nil
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let n = recv(fd, &buffer, buffer.count, 0)
                    guard n > 0 else { break }
                    received += buffer[..<n]
                    if !sent, let marker, String(decoding: received, as: UTF8.self).contains(marker) {
                        sent = true
                        _ = send(fd, then, then.count, 0)
                    }
                }
                let took = ContinuousClock.now - started
                done.resume(returning: (received, Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18))
            }
        }
    }

    /// Connects over plain TCP, sends `bytes`, and waits (at most 20 s) for the server to close
    /// the connection, whatever it answers; the seconds it took (20 when it did not).
    static func secondsUntilClosed(port: Int, sending bytes: [UInt8]) async throws -> Double {
        try await exchange(port: port, sending: bytes).seconds
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

            // Before any request is complete too: nothing sent, a head cut short, no HTTP at all.
            for bytes in ["", "GET /healthz HTTP/1.1\r\nHost: x\r\n", "GARBAGE\r\n\r\n"] {
                let waited = try await Self.secondsUntilClosed(port: port, sending: Array(bytes.utf8))
                #expect(waited < 8, "\(bytes.debugDescription): closed by the server after \(waited) s")
            }

            try await withStream(port: port, query: "scope=s&mode=live") { stream in
                try await stream.wait(forType: "caughtUp")
                try await Task.sleep(for: .seconds(3))
                // On a new connection: the test client's own, opened at the start and idle
                // since, was closed after the idle timeout as it should be.
                var post = HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/events")
                post.method = .POST
                post.headers.add(name: "Content-Type", value: "application/x-ndjson")
                post.body = .bytes(ByteBuffer(string: StreamTests.frames(2).map(\.json).joined(separator: "\n")))
                // Retried (the events dedupe): with a 1 s timeout, a loaded machine was seen to
                // take longer than that between connecting and sending (CI: remoteConnectionClosed).
                var answer: HTTPClientResponse?
                for attempt in 1...3 where answer == nil {
                    do {
                        answer = try await HTTPClient.shared.execute(post, timeout: .seconds(30))
                    } catch let error as HTTPClientError where error == .remoteConnectionClosed && attempt < 3 {}
                }
                #expect(answer?.status == .ok)
                try await stream.wait(forEvents: 2)
            }
        }
    }
}
