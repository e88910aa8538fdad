import HTTPTypes
import Hummingbird
import NovaCore

/// Bearer-token authentication with roles (api.md). With no tokens configured, auth is off; the
/// executable refuses that on any address but loopback.
///
/// Tokens are compared as SHA-256 hashes in constant time, against every configured token, so
/// neither the timing nor the order of the list tells a caller anything. Tokens are never logged.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = NovaRequestContext

    struct Entry: Sendable {
        var hash: [UInt8]
        var roles: Set<NovaConfiguration.Role>
        var siteId: String?
    }

    let entries: [Entry]

    init(tokens: [NovaConfiguration.Token]) {
        entries = tokens.map { Entry(hash: Array($0.sha256.utf8), roles: Set($0.roles), siteId: $0.siteId) }
    }

    /// The role a route needs, or nil for the routes open to all (health and metrics).
    static func requiredRole(method: HTTPRequest.Method, path: String) -> NovaConfiguration.Role? {
        switch (method, path) {
        case (.post, "/v1/events"): .ingest
        case (_, "/metrics"), (_, "/healthz"), (_, "/readyz"): nil
        case (.post, "/v1/sync/batches"), (.get, "/v1/sync/watermark"): .sync
        case (.delete, _): .admin
        default: .read
        }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard !entries.isEmpty, let role = Self.requiredRole(method: request.method, path: request.uri.path) else {
            return try await next(request, context)
        }
        guard let header = request.headers[.authorization], header.prefix(7).lowercased() == "bearer ", header.count > 7 else {
            throw APIError(.unauthorized, "Authorization: a bearer token is required", headers: [.wwwAuthenticate: "Bearer"])
        }
        let presented = Array(TokenHash.sha256Hex(String(header.dropFirst(7))).utf8)
        var slot: Int?
        for (k, entry) in entries.enumerated() where TokenHash.constantTimeEqual(entry.hash, presented) {
            slot = k
        }
        guard let slot else {
            throw APIError(.unauthorized, "Authorization: unknown token", headers: [.wwwAuthenticate: "Bearer"])
        }
        let match = entries[slot]
        // A site's sync token may also read the digests and stats that `nova sync repair` compares.
        let syncReadable = role == .read && ["/v1/digests", "/v1/stats"].contains(request.uri.path) && match.roles.contains(.sync)
        guard match.roles.contains(role) || (match.roles.contains(.admin) && role != .sync) || syncReadable else {
            throw APIError(.forbidden, "Authorization: this token lacks the \(role.rawValue) role")
        }
        var context = context
        if role == .sync { context.syncSiteId = match.siteId }
        context.tokenSlot = slot
        return try await next(request, context)
    }
}
