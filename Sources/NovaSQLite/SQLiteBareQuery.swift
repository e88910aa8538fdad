import GRDB
import NovaCore

/// The query benchmark's baseline on SQLite: the same ordered range SQL that the store runs,
/// through GRDB's plain API (`Row.fetchAll`), with no NOVA code between the caller and SQLite.
public final class SQLiteBareQuery: Sendable {
    let pool: DatabasePool

    public init(path: String) throws {
        var config = Configuration()
        config.readonly = true
        config.maximumReaderCount = 32
        pool = try DatabasePool(path: path, configuration: config)
    }

    /// Runs the ordered read of `read` (no cursor) and returns how many rows came back.
    public func count(_ read: LaneRead) async throws -> Int {
        let sql = SQLiteStore.selectSQL(read)
        let arguments: StatementArguments = read.filter.map { [read.scopeId, read.to.microseconds, read.limit, read.from.microseconds, $0] }
            ?? [read.scopeId, read.to.microseconds, read.limit, read.from.microseconds]
        return try await pool.read { db in try Row.fetchAll(db, sql: sql, arguments: arguments).count }
    }

    public func close() throws {
        try pool.close()
    }
}
