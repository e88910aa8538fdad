import ArgumentParser
import Foundation
import Hummingbird
import Logging
import Metrics
import NIOCore
import NovaCore
import NovaPostgres
import NovaServer
import NovaSQLite
import NovaSync
import Prometheus
import ServiceLifecycle
import UnixSignals

/// `nova record`: the edge recorder on the embedded SQLite store.
struct RecordCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record",
        abstract: "Run an edge recorder: ingest, query and stream API over the local SQLite store.",
        discussion: """
            Listens on server.host:server.port (127.0.0.1:8080 by default) and stores events in \
            database.sqlite.path. SIGTERM or SIGINT stop it gracefully: requests in flight finish, \
            and every acknowledged event is already committed.
            """
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let config = try options.load()
        if options.printConfig {
            print(config.printable)
            return
        }
        try config.checkListenAddress()
        let dual = config.database.type == .dual
        guard config.database.type == .sqlite || (dual && config.database.dual.primary == .sqlite) else {
            throw CLIError("database.type: nova record runs on the embedded sqlite store (or dual with dual.primary sqlite); found \(config.database.type.rawValue)")
        }
        let logger = options.bootstrapLogging()
        let store = try openSQLite(config, logger: logger)
        var services: [any Service] = [StoreService(store: store)]
        var shadow: PostgresStore?
        if dual {
            let pg = PostgresStore(location: try PostgresLocation(configuration: config.database.timescaledb), logger: logger)
            services.append(pg)
            shadow = pg
        }
        if let keep = config.database.sqlite.retentionAfter.flatMap(NovaConfiguration.parseInterval) {
            // Sweeps often enough for short test retentions, at most once a minute.
            let interval = min(Duration.seconds(60), max(Duration.seconds(1), keep / 10))
            var holds: (@Sendable () async throws -> Int64)?
            if let pg = shadow {
                holds = { try await pg.syncWatermark(siteId: ShadowWriter.siteId, storeId: try await store.outboxState().storeId).ackedSeq }
            }
            services.append(SQLiteRetention(store: store, keep: keep, onlyAcknowledged: config.sync.enabled, shadowHolds: holds, interval: interval, logger: logger))
        }
        try await serve(store: store, services: services, config: config, logger: logger, isHub: false, ships: config.sync.enabled, shadow: shadow)
    }
}

/// The SQLite store of `config` (a bad or foreign file is refused with the reason).
func openSQLite(_ config: NovaConfiguration, logger: Logger) throws -> SQLiteStore {
    do {
        var options = SQLiteStore.Options(durability: config.database.sqlite.durability)
        options.maxBytes = config.database.sqlite.maxBytes
        return try SQLiteStore.open(path: config.database.sqlite.path, options: options, logger: logger)
    } catch {
        throw CLIError(error.message)
    }
}

/// Runs the HTTP API over `store` until SIGTERM or SIGINT. `services` (the stores' own) start
/// first and stop last, after the HTTP server has drained; with `ships`, the sync shipper, and
/// with a `shadow` (dual mode), its ``ShadowWriter``, run between them (they stop after the
/// server, before the stores).
func serve(
    store: any EventStore, services: [any Service], config: NovaConfiguration, logger: Logger, isHub: Bool, ships: Bool = false, shadow: (any EventStore)? = nil
) async throws {
    let registry = PrometheusCollectorRegistry()
    MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    var shipper: Shipper?
    var status: (@Sendable () async throws -> SyncStatusReport)?
    let inFlight = InFlightIngest()
    if ships {
        let s = try makeShipper(store: store, config: config, inFlight: inFlight, registry: registry, logger: logger)
        shipper = s
        status = { try await s.status() }
    }
    let api = RecorderAPI(store: store, configuration: config, metrics: NovaMetrics(registry: registry), logger: logger, syncStatus: status, inFlight: inFlight, isHub: isHub)
    let scheme = config.server.tls == nil ? "http" : "https"
    let app = try api.application(host: config.server.host, port: config.server.port) { channel in
        let port = channel.localAddress?.port ?? config.server.port
        // One line on stdout that scripts and tests wait for.
        FileHandle.standardOutput.write(Data("nova: listening on \(scheme)://\(config.server.host):\(port) (\(store.description))\n".utf8))
    }
    var shipping: [any Service] = shipper.map { [$0] } ?? []
    if let shadow {
        var settings = ShadowWriter.Settings()
        settings.verifyEvery = NovaConfiguration.parseInterval(config.database.dual.verifyEvery)!
        settings.verifyWindow = NovaConfiguration.parseInterval(config.database.dual.verifyWindow)!
        settings.sweepEvery = NovaConfiguration.parseInterval(config.database.dual.sweepEvery)!
        logger.info("dual: writes are copied to the shadow store", metadata: ["primary": "\(store.description)", "shadow": "\(shadow.description)"])
        shipping.append(ShadowWriter(primary: store, shadow: shadow, settings: settings, registry: registry, logger: logger))
    }
    var configuration = ServiceGroupConfiguration(services: services + shipping + [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    // A client that keeps a connection busy must not keep the process alive: after 10 s of
    // draining, what is still open is cancelled (nothing is lost: acknowledged means committed).
    configuration.maximumGracefulShutdownDuration = .seconds(10)
    configuration.maximumCancellationDuration = .seconds(5)
    do {
        try await ServiceGroup(configuration: configuration).run()
    } catch is CancellationError {
        logger.warning("shutdown: connections still busy after 10 s were cancelled")
    } catch let error as IOError where error.errnoCode == EADDRINUSE {
        throw CLIError("server.port: \(config.server.host):\(config.server.port) is in use by another process; pick another port (--port or server.port)")
    }
    logger.info("stopped", metadata: ["store": "\(store.description)"])
}

/// The shipper of `config.sync`, its token read from the environment variable the file names.
func makeShipper(
    store: any EventStore, config: NovaConfiguration, inFlight: InFlightIngest, registry: PrometheusCollectorRegistry, logger: Logger
) throws -> Shipper {
    let token = ProcessInfo.processInfo.environment[config.sync.tokenEnv].flatMap { $0.isEmpty ? nil : $0 }
    if token == nil {
        logger.warning("sync: no token in the environment; the hub must run with auth off", metadata: ["token_env": "\(config.sync.tokenEnv)"])
    }
    var settings = Shipper.Settings(siteId: config.core.siteId, batchSize: config.sync.batchSize, maxBackoff: .seconds(config.sync.maxBackoffSeconds))
    settings.maxBatchBytes = config.sync.maxBatchBytes
    let client = SyncClient(upstream: config.sync.upstream, token: token, gzip: config.sync.compression == "gzip", http: try SyncClient.http(trusting: config.sync.caFile))
    logger.info("sync: shipping to the hub", metadata: ["upstream": "\(config.sync.upstream)", "siteId": "\(config.core.siteId)", "batchSize": "\(config.sync.batchSize)"])
    return Shipper(store: store, client: client, settings: settings, inFlight: inFlight, registry: registry, logger: logger)
}

/// Keeps the store open while the server runs; ServiceGroup stops services in reverse order, so
/// the HTTP server drains first and the store closes last.
struct StoreService: Service {
    let store: any EventStore

    func run() async throws {
        try? await gracefulShutdown()
        await store.close()
    }
}
