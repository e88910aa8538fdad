import Foundation
import Logging
import NovaCore
import NovaPostgres
import NovaSQLite

/// A store named on the command line: `sqlite:PATH` or `postgres://USER@HOST:PORT/DB` (api.md).
enum StoreLocator: CustomStringConvertible {
    case sqlite(path: String)
    case postgres(PostgresLocation)

    init(_ text: String) throws {
        if text.hasPrefix("sqlite:") {
            let path = String(text.dropFirst("sqlite:".count))
            guard !path.isEmpty else { throw CLIError("\(text): sqlite: needs a path, e.g. sqlite:data/nova.db") }
            self = .sqlite(path: path)
        } else if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            do {
                self = .postgres(try PostgresLocation(locator: text))
            } catch {
                throw CLIError(error.message)
            }
        } else {
            throw CLIError("\(text): not a store locator; expected sqlite:PATH or postgres://USER@HOST:PORT/DB")
        }
    }

    var description: String {
        switch self {
        case .sqlite(let path): "sqlite:\(path)"
        case .postgres(let location): location.description
        }
    }

    /// Runs `body` with the store open (and, for PostgreSQL, its pool running), then closes it.
    /// `create` makes a missing store; `readOnly` never writes to a SQLite file.
    func withStore<T>(create: Bool, readOnly: Bool = false, logger: Logger, _ body: (any EventStore) async throws -> T) async throws -> T {
        switch self {
        case .sqlite(let path):
            let store: SQLiteStore
            do {
                store = try SQLiteStore.open(path: path, options: .init(createIfMissing: create, readOnly: readOnly), logger: logger)
            } catch {
                throw CLIError(error.message)
            }
            do {
                let result = try await body(store)
                await store.close()
                return result
            } catch {
                await store.close()
                throw error
            }
        case .postgres(let location):
            let store = PostgresStore(location: location, createIfMissing: create, maintainsPartitions: false, retriesRefusals: false, logger: logger)
            let running = Task { try await store.run() }
            defer { running.cancel() }
            do {
                try await store.waitUntilReady(timeout: .seconds(location.pool.connectionTimeout + 5))
            } catch {
                throw CLIError(error.message)
            }
            return try await body(store)
        }
    }
}

/// A logger for one-shot tools: warnings and errors only, to standard error.
func toolLogger() -> Logger {
    var logger = Logger(label: "nova", factory: { StreamLogHandler.standardError(label: $0) })
    logger.logLevel = .warning
    return logger
}
