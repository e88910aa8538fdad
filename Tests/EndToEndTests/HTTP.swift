import AsyncHTTPClient
import Foundation
import NIOCore
import NovaCore
import NovaTestSupport

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
        let sent = request
        let answer = try await bounded(timeout, "POST \(url)") {
            let response = try await client.execute(sent, timeout: timeout)
            return (response.status.code, try await response.body.collect(upTo: 1 << 26))
        }
        return (answer.0, String(buffer: answer.1))
    }

    static func get(_ url: String, token: String? = nil) async throws -> (status: UInt, body: String, cursor: String?) {
        var request = HTTPClientRequest(url: url)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        let sent = request
        let answer = try await bounded(.seconds(30), "GET \(url)") {
            let response = try await client.execute(sent, timeout: .seconds(30))
            return (response.status.code, try await response.body.collect(upTo: 1 << 28), response.headers.first(name: "Nova-Next-Cursor"))
        }
        return (answer.0, String(buffer: answer.1), answer.2)
    }

    /// The whole exchange within `timeout` and a margin, body included: the client's own
    /// deadline ends at the response head, and a crash-campaign run was seen frozen with one
    /// socket to a killed recorder in CLOSE_WAIT and nothing left running. Past the bound the
    /// exchange is left behind (cancelled) and the call fails.
    private static func bounded<T: Sendable>(_ timeout: TimeAmount, _ what: String, _ exchange: @escaping @Sendable () async throws -> T) async throws -> T {
        let task = Task { try await exchange() }
        let limit = Duration.nanoseconds(timeout.nanoseconds) + .seconds(5)
        let ended = await withTaskCancellationHandler {
            await awaitEnd(of: task, within: limit, "\(what)")
        } onCancel: {
            task.cancel()
        }
        guard let ended else {
            task.cancel()
            throw ProcessError("\(what): no whole answer within \(limit)")
        }
        return try ended.get()
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
