import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import NovaCore
import NovaServer
import NovaSQLite
import NovaTestSupport

/// The recorder API on a fresh store of `backend`, served over real loopback HTTP for one test.
func withRecorder<T: Sendable>(
    _ backend: Backend = .sqlite,
    configure: (inout NovaConfiguration) -> Void = { _ in },
    feedCapacity: Int = 32_768,
    handOverDistance: Int = 4_096,
    _ body: @Sendable (any TestClientProtocol, any EventStore, NovaMetrics) async throws -> T
) async throws -> T {
    var config = NovaConfiguration()
    configure(&config)
    let (store, cleanup) = try await backend.makeStore()
    let metrics = NovaMetrics()
    let api = RecorderAPI(store: store, configuration: config, metrics: metrics, logger: quietLogger, feedCapacity: feedCapacity, handOverDistance: handOverDistance)
    do {
        let app = try api.application(host: "127.0.0.1", port: 0)
        let result = try await app.test(.live) { client in try await body(client, store, metrics) }
        await cleanup()
        return result
    } catch {
        await cleanup()
        throw error
    }
}

extension TestClientProtocol {
    func post(_ uri: String = "/v1/events", ndjson lines: [String], headers: HTTPFields = [:]) async throws -> TestResponse {
        var h = headers
        h[.contentType] = "application/x-ndjson"
        return try await execute(uri: uri, method: .post, headers: h, body: ByteBuffer(string: lines.joined(separator: "\n") + "\n"))
    }

    func get(_ uri: String, headers: HTTPFields = [:]) async throws -> TestResponse {
        try await execute(uri: uri, method: .get, headers: headers)
    }
}

extension TestClientProtocol {
    /// Posts `events` as NDJSON (their answer form, which is valid ingest input) and checks the answer.
    func ingest(_ events: [Event]) async throws {
        let lines = events.map { e -> String in
            var out = [UInt8]()
            e.writeJSON(into: &out)
            return String(decoding: out, as: UTF8.self)
        }
        let response = try await post(ndjson: lines)
        guard response.status == .ok else { throw StreamTestError("ingest failed: \(response.status) \(response.text)") }
    }
}

extension TestResponse {
    var text: String { String(buffer: body) }
    var json: JSONValue { (try? JSONParser.parse(text)) ?? .null }
    var lines: [String] { text.split(separator: "\n").map(String.init) }
    var errorMessage: String { json["error"]?.stringValue ?? "" }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters pass).
func enc(_ s: String) -> String {
    s.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"))!
}

let everything = "from=1970-01-01T00:00:00Z&to=9999-12-31T23:59:59.999999Z"
