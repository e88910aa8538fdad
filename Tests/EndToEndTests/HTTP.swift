import AsyncHTTPClient
import Foundation
import NIOCore
import NovaCore

/// Minimal HTTP for end-to-end tests, over a real socket.
enum HTTP {
    /// A client that fails at once when the server is gone (a killed recorder), instead of
    /// retrying the connection until the request's deadline.
    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    static func post(_ url: String, ndjson body: String, token: String? = nil, timeout: TimeAmount = .seconds(30)) async throws -> (status: UInt, body: String) {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        request.headers.add(name: "Content-Type", value: "application/x-ndjson")
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await client.execute(request, timeout: timeout)
        return (response.status.code, String(buffer: try await response.body.collect(upTo: 1 << 26)))
    }

    static func get(_ url: String, token: String? = nil) async throws -> (status: UInt, body: String, cursor: String?) {
        var request = HTTPClientRequest(url: url)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        let response = try await client.execute(request, timeout: .seconds(30))
        return (response.status.code, String(buffer: try await response.body.collect(upTo: 1 << 28)), response.headers.first(name: "Nova-Next-Cursor"))
    }

    /// Every event id of a scope, following cursors.
    static func allEventIds(_ base: String, scope: String) async throws -> [String] {
        var ids = [String]()
        var cursor: String?
        repeat {
            let page = try await get("\(base)/v1/events?scope=\(scope)&from=1970-01-01T00:00:00Z&to=9999-12-31T00:00:00Z&limit=50000" + (cursor.map { "&after=\($0)" } ?? ""))
            guard page.status == 200 else { throw ProcessError("query failed: \(page.status) \(page.body)") }
            for line in page.body.split(separator: "\n") {
                if let id = (try? JSONParser.parse(String(line)))?["eventId"], case .string(let s) = id { ids.append(s) }
            }
            cursor = page.cursor
        } while cursor != nil
        return ids
    }
}

struct ProcessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
