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
    /// Only for ``RecorderAPI/upgradeRouter()``: a refused token goes on in the context.
    let refusalsOnTheSocket: Bool

    init(tokens: [NovaConfiguration.Token], refusalsOnTheSocket: Bool = false) {
        entries = tokens.map { Entry(hash: Array($0.sha256.utf8), roles: Set($0.roles), siteId: $0.siteId) }
        self.refusalsOnTheSocket = refusalsOnTheSocket
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
        var context = context
        switch authenticate(request, role: role) {
        case .success(let token):
            if role == .sync { context.syncSiteId = token.siteId }
            context.tokenSlot = token.slot
        case .failure(let refusal):
            guard refusalsOnTheSocket else { throw refusal }
            context.refusal = refusal
        }
        return try await next(request, context)
    }

    /// The matching token's slot and site, or a 401/403 saying what is wrong.
    private func authenticate(_ request: Request, role: NovaConfiguration.Role) -> Result<(slot: Int, siteId: String?), APIError> {
        guard let header = request.headers[.authorization], header.prefix(7).lowercased() == "bearer ", header.count > 7 else {
            return .failure(APIError(.unauthorized, "Authorization: a bearer token is required", headers: [.wwwAuthenticate: "Bearer"]))
        }
        let presented = Array(TokenHash.sha256Hex(String(header.dropFirst(7))).utf8)
        var slot: Int?
        for (k, entry) in entries.enumerated() where TokenHash.constantTimeEqual(entry.hash, presented) {
            slot = k
        }
        guard let slot else {
            return .failure(APIError(.unauthorized, "Authorization: unknown token", headers: [.wwwAuthenticate: "Bearer"]))
        }
        let match = entries[slot]
        // A site's sync token may also read the digests and stats that `nova sync repair` compares.
        let syncReadable = role == .read && ["/v1/digests", "/v1/stats"].contains(request.uri.path) && match.roles.contains(.sync)
        guard match.roles.contains(role) || (match.roles.contains(.admin) && role != .sync) || syncReadable else {
            return .failure(APIError(.forbidden, "Authorization: this token lacks the \(role.rawValue) role"))
        }
        return .success((slot, match.siteId))
    }
}
