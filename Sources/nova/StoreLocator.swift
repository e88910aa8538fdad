import Logging
import NovaCore
import NovaSQLite

/// A store named on the command line: `sqlite:PATH` or `postgres://USER@HOST:PORT/DB` (api.md).
enum StoreLocator: CustomStringConvertible {
    case sqlite(path: String)
    case postgres(url: String)

    init(_ text: String) throws {
        if text.hasPrefix("sqlite:") {
            let path = String(text.dropFirst("sqlite:".count))
            guard !path.isEmpty else { throw CLIError("\(text): sqlite: needs a path, e.g. sqlite:data/nova.db") }
            self = .sqlite(path: path)
        } else if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            self = .postgres(url: text)
        } else {
            throw CLIError("\(text): not a store locator; expected sqlite:PATH or postgres://USER@HOST:PORT/DB")
        }
    }

    var description: String {
        switch self {
        case .sqlite(let path): "sqlite:\(path)"
        case .postgres(let url): url
        }
    }

    /// Opens the store; `create` makes a missing SQLite file, `readOnly` never writes.
    func open(create: Bool, readOnly: Bool = false, logger: Logger) throws -> any EventStore {
        switch self {
        case .sqlite(let path):
            do {
                return try SQLiteStore.open(path: path, options: .init(createIfMissing: create, readOnly: readOnly), logger: logger)
            } catch {
                throw CLIError(error.message)
            }
        case .postgres:
            throw CLIError("\(self): PostgreSQL stores are not supported by this build yet; use a sqlite: locator")
        }
    }
}

/// A logger for one-shot tools: warnings and errors only, to standard error.
func toolLogger() -> Logger {
    var logger = Logger(label: "nova", factory: { StreamLogHandler.standardError(label: $0) })
    logger.logLevel = .warning
    return logger
}
