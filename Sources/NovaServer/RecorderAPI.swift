import HTTPTypes
import Prometheus
import Hummingbird
import Logging
import NovaCore

/// The HTTP API of api.md over any ``EventStore``: what `nova record` (edge) and `nova serve` (hub)
/// both serve. It knows nothing of SQL; the store knows nothing of HTTP.
///
/// ```swift
/// let api = RecorderAPI(store: store, configuration: config)
/// let app = Application(router: api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 8080)))
/// try await app.runService()
/// ```
public struct RecorderAPI: Sendable {
    public let store: any EventStore
    public let configuration: NovaConfiguration
    public let metrics: NovaMetrics
    public let logger: Logger
    let decoder: EventDecoder

    public init(store: any EventStore, configuration: NovaConfiguration, metrics: NovaMetrics = NovaMetrics(), logger: Logger = Logger(label: "nova.server")) {
        self.store = store
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        self.decoder = EventDecoder(limits: configuration.limits)
    }

    public func router() -> Router<NovaRequestContext> {
        let router = Router(context: NovaRequestContext.self)
        router.add(middleware: MetricsMiddleware())
        router.add(middleware: ErrorLoggingMiddleware(logger: logger))
        router.add(middleware: AuthMiddleware(tokens: configuration.server.tokens))
        router.post("/v1/events") { request, _ in try await ingest(request) }
        router.get("/v1/events") { request, _ in try await query(request) }
        router.get("/v1/stats") { request, _ in try await stats(request) }
        router.get("/healthz") { _, _ in jsonResponse(#"{"status":"ok"}"#) }
        router.get("/readyz") { _, _ in try await ready() }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
        return router
    }

    func ready() async throws -> Response {
        do {
            try await store.checkReady()
            return jsonResponse(#"{"status":"ready"}"#)
        } catch {
            throw APIError(.serviceUnavailable, "not ready: \(error.message)")
        }
    }
}

func jsonResponse(_ text: String, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
    var fields = headers
    fields[.contentType] = "application/json"
    return Response(status: status, headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(string: text + "\n")))
}

/// Logs every server-side failure at error level (Hummingbird logs unknown errors only at debug,
/// and an operator needs to see them) and turns it into the API's JSON error shape.
struct ErrorLoggingMiddleware: RouterMiddleware {
    typealias Context = NovaRequestContext
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            // A not-ready answer is the probe working, not a failure to report on every poll.
            if error.status.code >= 500, request.uri.path != "/readyz" {
                logger.error("request failed", metadata: ["path": "\(request.uri.path)", "status": "\(error.status.code)", "error": "\(error.message)"])
            }
            throw error
        } catch let error as HTTPError {
            throw APIError(error.status, error.body ?? error.status.reasonPhrase)
        } catch let error as any HTTPResponseError {
            throw APIError(error.status, error.status.reasonPhrase)
        } catch {
            logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            throw APIError(.internalServerError, "internal error: \(error)")
        }
    }
}
