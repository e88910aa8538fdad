import ArgumentParser
import Foundation
import Hummingbird
import Logging
import Metrics
import NIOCore
import NovaCore
import NovaServer
import NovaSQLite
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
        guard config.database.type == .sqlite else {
            throw CLIError("database.type: nova record runs on the embedded sqlite store; found \(config.database.type.rawValue)")
        }
        let logger = options.bootstrapLogging()
        let store: SQLiteStore
        do {
            store = try SQLiteStore.open(
                path: config.database.sqlite.path, options: .init(durability: config.database.sqlite.durability), logger: logger)
        } catch {
            throw CLIError(error.message)
        }
        try await serve(store: store, services: [StoreService(store: store)], config: config, logger: logger)
    }
}

/// Runs the HTTP API over `store` until SIGTERM or SIGINT. `services` (the store's own) start
/// first and stop last, after the HTTP server has drained.
func serve(store: any EventStore, services: [any Service], config: NovaConfiguration, logger: Logger) async throws {
    let registry = PrometheusCollectorRegistry()
    MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    let api = RecorderAPI(store: store, configuration: config, metrics: NovaMetrics(registry: registry), logger: logger)
    let app = api.application(host: config.server.host, port: config.server.port) { channel in
        let port = channel.localAddress?.port ?? config.server.port
        // One line on stdout that scripts and tests wait for.
        FileHandle.standardOutput.write(Data("nova: listening on http://\(config.server.host):\(port) (\(store.description))\n".utf8))
    }
    var configuration = ServiceGroupConfiguration(services: services + [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    // A client that keeps a connection busy must not keep the process alive: after 10 s of
    // draining, what is still open is cancelled (nothing is lost: acknowledged means committed).
    configuration.maximumGracefulShutdownDuration = .seconds(10)
    configuration.maximumCancellationDuration = .seconds(5)
    do {
        try await ServiceGroup(configuration: configuration).run()
    } catch is CancellationError {
        logger.warning("shutdown: connections still busy after 10 s were cancelled")
    }
    logger.info("stopped", metadata: ["store": "\(store.description)"])
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
