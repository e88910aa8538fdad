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
        switch config.database.type {
        case .timescaledb:
            let store = PostgresStore(location: PostgresLocation(configuration: config.database.timescaledb), logger: logger)
            try await serve(store: store, services: [store], config: config, logger: logger)
        case .sqlite:
            let store: SQLiteStore
            do {
                store = try SQLiteStore.open(
                    path: config.database.sqlite.path, options: .init(durability: config.database.sqlite.durability), logger: logger)
            } catch {
                throw CLIError(error.message)
            }
            try await serve(store: store, services: [StoreService(store: store)], config: config, logger: logger)
        case .dual:
            throw CLIError("database.type: dual is not supported by this build yet; use sqlite or timescaledb")
        }
    }
}
