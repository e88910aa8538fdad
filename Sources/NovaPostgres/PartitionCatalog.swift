import Logging
import NovaCore
import PostgresNIO
import Synchronization

/// The daily partitions that exist (portable mode), so that appends create only the missing ones.
///
/// Partitions are named `<table>_pYYYYMMDD` and cover one UTC day. Appends create the days they
/// touch on demand (backfills and late data can carry any date); ``PartitionMaintenance`` creates
/// the coming days ahead so the hot path rarely issues DDL.
final class PartitionCatalog: Sendable {
    private let known = Mutex<Set<String>>([])

    static let parents = ["eventIndex"] + Lane.allCases.map { LaneSQL($0).table }
    static let dayMicros: Int64 = 86_400_000_000

    static func name(_ table: String, day: Int64) -> String {
        let t = Timestamp(microseconds: day * dayMicros).rfc3339
        return "\(table)_p\(t.prefix(4))\(t.dropFirst(5).prefix(2))\(t.dropFirst(8).prefix(2))"
    }

    static func day(of time: Timestamp) -> Int64 { time.microseconds.floorDivided(by: dayMicros).quotient }

    /// The UTC day of a partition name, or nil for a name that is not one of ours.
    static func day(ofPartition name: String, table: String) -> Int64? {
        let prefix = "\(table)_p"
        guard name.hasPrefix(prefix), name.count == prefix.count + 8 else { return nil }
        let d = name.dropFirst(prefix.count)
        let text = "\(d.prefix(4))-\(d.dropFirst(4).prefix(2))-\(d.dropFirst(6))T00:00:00Z"
        guard let t = try? Timestamp(rfc3339: text) else { return nil }
        return day(of: t)
    }

    func load(_ store: PostgresStore) async throws {
        let logger = store.logger
        let names = try await store.connection { conn in
            let rows = try await conn.query("""
                SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY(\(Self.parents)) AND p.relnamespace = c.relnamespace
                """, logger: logger)
            var names = Set<String>()
            for try await name in rows.decode(String.self) { names.insert(name) }
            return names
        }
        known.withLock { $0 = names }
    }

    /// The partitions of `table` currently known, with their days.
    func partitions(of table: String) -> [(name: String, day: Int64)] {
        known.withLock { names in
            names.compactMap { name in Self.day(ofPartition: name, table: table).map { (name, $0) } }.sorted { $0.day < $1.day }
        }
    }

    func forget(_ name: String) {
        _ = known.withLock { $0.remove(name) }
    }

    /// Creates the partitions of `table` for `days` that do not exist yet.
    ///
    /// A partition is created as a plain table and then attached, which locks the parent only
    /// against other DDL (SHARE UPDATE EXCLUSIVE), not against inserts: `CREATE TABLE … PARTITION
    /// OF` would wait for every open transaction that wrote to the parent, among them a sync
    /// batch that inserted its dedupe entries and waits for its predecessor, which may be the one
    /// creating the partition. A table left unattached by a crash is attached by the next call.
    func ensure(_ table: String, days: Set<Int64>, store: PostgresStore) async throws {
        let logger = store.logger
        let missing = known.withLock { names in days.filter { !names.contains(Self.name(table, day: $0)) } }
        for day in missing.sorted() {
            let name = Self.name(table, day: day)
            let from = Timestamp(microseconds: day * Self.dayMicros).rfc3339
            let sql = """
                DO $$ BEGIN
                    IF NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                                   WHERE c.relname = '\(name)' AND c.relnamespace = current_schema()::regnamespace) THEN
                        CREATE TABLE IF NOT EXISTS "\(name)" (LIKE "\(table)" INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
                        ALTER TABLE "\(table)" ATTACH PARTITION "\(name)"
                            FOR VALUES FROM ('\(from)') TO ('\(from)'::timestamptz + INTERVAL '1 day');
                    END IF;
                END $$
                """
            do {
                try await store.connection { conn in _ = try await conn.query(PostgresQuery(unsafeSQL: sql), logger: logger) }
            } catch where ["42P07", "42710", "23505", "42809"].contains(sqlState(error) ?? "") {
                // Another process created and attached it between our check and our statement
                // (in one transaction, which our statement waited for before it failed).
            }
            _ = known.withLock { $0.insert(name) }
        }
    }
}
