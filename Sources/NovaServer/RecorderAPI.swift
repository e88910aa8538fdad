import HTTPTypes
import Prometheus
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOSSL
import NovaCore
import ServiceLifecycle

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
    /// The recent commits that LIVE streams read; ``services`` keeps it current.
    public let feed: CommitFeed
    let handOverDistance: Int
    let decoder: EventDecoder
    let syncAdmission: SyncAdmission
    let completeThrough = CompleteThrough()
    let syncSequencer = SyncSequencer()
    let streamAdmission = StreamAdmission()
    /// Ingest requests received and not yet committed (the shipper's `pendingFrom` needs them).
    public let inFlight: InFlightIngest
    /// The edge's shipper state for `GET /v1/sync/status`; nil where sync is off.
    let syncStatus: (@Sendable () async throws -> SyncStatusReport)?
    /// Whether this is a hub (`nova serve`), which takes sync batches, or an edge (`nova record`),
    /// which ships them and must not take another's: what it took would be shipped on under its
    /// own `siteId`.
    public let isHub: Bool

    /// `feedCapacity`: how many recent commits LIVE streams are served from memory; a client
    /// further behind reads the store and encodes for itself, which at 20 clients costs enough to
    /// put it further behind. 131,072 (2.6 s at 50,000 events/s) cut LIVE's delivery p99 at
    /// that rate in 12-second runs from 13.5-13.8 s to 8.4-10.2 s against 32,768; the server's
    /// peak RSS in those runs: 315-317 MiB before, 311-324 after. `handOverDistance`: how close
    /// to the head (in commits) a rewind without `to` hands over to LIVE.
    public init(
        store: any EventStore, configuration: NovaConfiguration, metrics: NovaMetrics = NovaMetrics(), logger: Logger = Logger(label: "nova.server"),
        feedCapacity: Int = 131_072, handOverDistance: Int = 4_096, syncStatus: (@Sendable () async throws -> SyncStatusReport)? = nil,
        inFlight: InFlightIngest = InFlightIngest(), isHub: Bool = true
    ) {
        self.store = store
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        self.decoder = EventDecoder(limits: configuration.limits)
        self.feed = CommitFeed(store: store, capacity: feedCapacity, logger: logger)
        self.handOverDistance = handOverDistance
        self.syncAdmission = SyncAdmission(limit: configuration.sync.maxConcurrentBatches)
        self.syncStatus = syncStatus
        self.inFlight = inFlight
        self.isHub = isHub
    }

    /// The HTTP server with WebSocket upgrades for `/v1/stream`, and the stream feed's upkeep;
    /// HTTPS and WSS only when `server.tls` is configured (its files are read here, so a bad one
    /// stops the start with the key named).
    ///
    /// Half-open stream connections are found by WebSocket pings every 60 s: a client that has
    /// not answered one by the next is closed. The period is long because a slow client's pong
    /// waits behind the events queued for it, and a slow client must not be dropped.
    public func application(
        host: String, port: Int, onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
    ) throws -> some ApplicationProtocol {
        let router = router()
        let webSocketResponder = upgradeRouter().buildResponder()
        let idle = Int64(configuration.server.idleTimeoutSeconds)
        var server = HTTPServerBuilder { responder in
            FirstRequestDeadline(
                base: HTTP1WebSocketUpgradeChannel(
                    responder: responder, webSocketResponder: webSocketResponder,
                    configuration: .init(http1: .init(idleTimeout: .seconds(idle)), ws: .init(
                        maxFrameSize: Self.maxFrameBytes(message: configuration.server.maxStreamMessageBytes),
                        autoPing: .enabled(timePeriod: .seconds(60))))),
                idle: .seconds(idle))
        }
        if let tls = configuration.server.tls {
            server = try .tls(server, tlsConfiguration: Self.tlsConfiguration(tls))
        }
        return Application(
            router: router,
            server: server,
            configuration: .init(address: .hostname(host, port: port), serverName: "nova"),
            services: [CommitFeedService(feed: feed, store: store, logger: logger)],
            onServerRunning: onServerRunning,
            logger: logger)
    }

    static func tlsConfiguration(_ tls: NovaConfiguration.ServerTLS) throws(ConfigurationError) -> TLSConfiguration {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(tls.certificate)
        } catch {
            throw ConfigurationError(key: "server.tls.certificate", rule: "cannot read a PEM certificate chain from \(tls.certificate) (\(error))")
        }
        guard !chain.isEmpty else { throw ConfigurationError(key: "server.tls.certificate", rule: "\(tls.certificate) holds no PEM certificate") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: tls.key, format: .pem)
        } catch {
            throw ConfigurationError(key: "server.tls.key", rule: "cannot read a PEM private key from \(tls.key) (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        return configuration
    }

    /// The hub's sync routes answer 404 on an edge, saying where they are served.
    func hubOnly() throws {
        guard isHub else { throw APIError(.notFound, "sync: batches, watermarks and sites are served by a hub (nova serve), not by an edge recorder (nova record)") }
    }

    public func router() -> Router<NovaRequestContext> {
        let router = Router(context: NovaRequestContext.self)
        router.add(middleware: MetricsMiddleware())
        router.add(middleware: ErrorLoggingMiddleware(logger: logger))
        router.add(middleware: AuthMiddleware(tokens: configuration.server.tokens))
        router.post("/v1/events") { request, _ in try await ingest(request) }
        router.get("/v1/events") { request, _ in try await query(request) }
        router.get("/v1/stats") { request, _ in try await stats(request) }
        router.post("/v1/sync/batches") { request, context in try hubOnly(); return try await receiveSyncBatch(request, context: context) }
        router.get("/v1/sync/watermark") { request, context in try hubOnly(); return try await syncWatermark(request, context: context) }
        router.get("/v1/sync/sites") { request, _ in try hubOnly(); return try await syncSites(request) }
        router.delete("/v1/sync/sites/:siteId") { request, context in try hubOnly(); return try await forgetSyncSite(request, context: context) }
        router.get("/v1/sync/status") { request, _ in try await syncStatus(request) }
        router.get("/v1/digests") { request, _ in try await digests(request) }
        addStreamRoute(to: router)
        // Hummingbird's router answers 404 for a known path asked with another method, which
        // reads as a wrong URL; a 405 with `Allow` says what the path takes.
        let allowed: [(RouterPath, [HTTPRequest.Method])] = [
            ("/v1/events", [.get, .post]), ("/v1/stats", [.get]), ("/v1/sync/batches", [.post]), ("/v1/sync/watermark", [.get]),
            ("/v1/sync/sites", [.get]), ("/v1/sync/sites/:siteId", [.delete]), ("/v1/sync/status", [.get]), ("/v1/digests", [.get]),
            ("/v1/stream", [.get]), ("/healthz", [.get]), ("/readyz", [.get]), ("/metrics", [.get]),
        ]
        for (path, methods) in allowed {
            let allow = methods.map(\.rawValue).joined(separator: ", ")
            for method in [HTTPRequest.Method.get, .head, .post, .put, .patch, .delete] where !methods.contains(method) {
                router.on(path, method: method) { _, _ -> Response in
                    throw APIError(.methodNotAllowed, "method: \(path) takes \(allow), not \(method.rawValue)", headers: [.allow: allow])
                }
            }
        }
        router.get("/healthz") { _, _ in jsonResponse(#"{"status":"ok"}"#) }
        router.get("/readyz") { _, _ in try await ready() }
        router.get("/metrics") { _, _ in
            if isHub { await refreshSiteGauges() }
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
        return router
    }

    /// What hummingbird-websocket asks whether to upgrade a connection: `/v1/stream` alone. A
    /// token refused here is let through to the stream handler, which says why on the socket and
    /// closes (1008): a refused upgrade can only answer a bare 400, which tells a client nothing.
    /// Requests that are not upgraded go to ``router()``, which refuses them as usual.
    func upgradeRouter() -> Router<NovaRequestContext> {
        let router = Router(context: NovaRequestContext.self)
        router.add(middleware: MetricsMiddleware())
        router.add(middleware: ErrorLoggingMiddleware(logger: logger))
        router.add(middleware: AuthMiddleware(tokens: configuration.server.tokens, refusalsOnTheSocket: true))
        addStreamRoute(to: router)
        return router
    }

    private func addStreamRoute(to router: Router<NovaRequestContext>) {
        router.ws("/v1/stream") { request, _ in
            // A plain GET (no upgrade asked for) reaches this too; it gets a 426 that says what
            // the endpoint is, not an empty 200.
            guard request.headers[.upgrade]?.lowercased().contains("websocket") == true else {
                throw APIError(.upgradeRequired, "Upgrade: /v1/stream is a WebSocket endpoint; connect with a WebSocket client (Upgrade: websocket)", headers: [.upgrade: "websocket"])
            }
            return .upgrade([:])
        } onUpgrade: { inbound, outbound, context in
            try await stream(inbound, outbound, context)
        }
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
///
/// The error goes back as a response, not thrown on: Hummingbird's `MetricsMiddleware` around it
/// times only responses, so a thrown error was missing from `http_server_request_duration` (and
/// counted only as `http_server_errors_total`), which hid slow 4xx and 5xx answers.
struct ErrorLoggingMiddleware: RouterMiddleware {
    typealias Context = NovaRequestContext
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let failure: APIError
        do {
            return try await next(request, context)
        } catch let error as APIError {
            // A not-ready answer is the probe working, not a failure to report on every poll.
            if error.status.code >= 500, request.uri.path != "/readyz" {
                logger.error("request failed", metadata: ["path": "\(request.uri.path)", "status": "\(error.status.code)", "error": "\(error.message)"])
            }
            failure = error
        } catch let error as HTTPError {
            failure = APIError(error.status, error.body ?? error.status.reasonPhrase)
        } catch let error as any HTTPResponseError {
            failure = APIError(error.status, error.status.reasonPhrase)
        } catch {
            logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            failure = APIError(.internalServerError, "internal error: \(error)")
        }
        return try failure.response(from: request, context: context)
    }
}
