import ArgumentParser
import Foundation
import NovaCore
import NovaPostgres
import NovaSQLite
import ServiceLifecycle

/// `nova serve`: the hub, the same API over the central store.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the hub: the recorder's API over the central store (PostgreSQL/TimescaleDB).",
        discussion: """
            With database.type = "timescaledb" the store is the PostgreSQL server of \
            database.timescaledb (password from the variable named by password_env). The HTTP API \
            starts at once; while the database is unreachable or refuses the credentials, /readyz \
            answers 503 with the reason, requests get 503, and nova retries with back-off. A store \
            whose schema is newer than this binary is refused (exit 1).
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
        let logger = options.bootstrapLogging()
        let postgres = { () throws in PostgresStore(location: try PostgresLocation(configuration: config.database.timescaledb), logger: logger) }
        switch (config.database.type, config.database.dual.primary) {
        case (.timescaledb, _):
            let store = try postgres()
            try await serve(store: store, services: [store], config: config, logger: logger, isHub: true)
        case (.sqlite, _):
            let store = try openSQLite(config, logger: logger)
            try await serve(store: store, services: [StoreService(store: store)], config: config, logger: logger, isHub: true)
        case (.dual, .timescaledb):
            let (store, shadow) = (try postgres(), try openSQLite(config, logger: logger))
            try await serve(store: store, services: [store, StoreService(store: shadow)], config: config, logger: logger, isHub: true, shadow: shadow)
        case (.dual, _):
            let (store, shadow) = (try openSQLite(config, logger: logger), try postgres())
            try await serve(store: store, services: [StoreService(store: store), shadow], config: config, logger: logger, isHub: true, shadow: shadow)
        }
    }
}
