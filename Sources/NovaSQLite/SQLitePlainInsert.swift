import Foundation
import GRDB
import NovaCore

/// The benchmark baseline: the store's plain-insert limit. The same rows, written by a bare
/// prepared-statement loop into a table with the same two ordering indexes, but with no dedupe
/// (neither index unique, no conflict clause), no `ingestSeq` bookkeeping and no stats, one
/// transaction per batch, in the same WAL mode and synchronous level as the store.
public enum SQLitePlainInsert {
    /// Writes `events` (one lane, raw) in batches of `batchSize` into a new file at `path`; returns
    /// the time spent writing (opening and schema creation excluded).
    public static func run(_ events: [Event], batchSize: Int, path: String) throws -> Duration {
        var config = Configuration()
        config.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768") }
        let pool = try DatabasePool(path: path, configuration: config)
        defer { try? pool.close() }
        let t = LaneSQL(.raw)
        try pool.write { db in
            try db.execute(sql: """
                CREATE TABLE \(t.table) (
                    ingestSeq INTEGER PRIMARY KEY, scopeId TEXT NOT NULL, sourceTruthTime INTEGER NOT NULL,
                    canonicalTruthTime INTEGER NOT NULL, eventId BLOB NOT NULL, connectionId TEXT NOT NULL,
                    sequence INTEGER NOT NULL, bytes BLOB NOT NULL) STRICT;
                CREATE INDEX \(t.indexName(.source)) ON \(t.table) (scopeId, \(t.orderColumns(.source).joined(separator: ", ")));
                CREATE INDEX \(t.indexName(.canonical)) ON \(t.table) (scopeId, \(t.orderColumns(.canonical).joined(separator: ", ")));
                """)
        }
        let sql = "INSERT INTO \(t.table) (scopeId, sourceTruthTime, canonicalTruthTime, eventId, connectionId, sequence, bytes) VALUES (?, ?, ?, ?, ?, ?, ?)"
        let start = ContinuousClock.now
        for batchStart in stride(from: 0, to: events.count, by: batchSize) {
            let batch = events[batchStart..<min(events.count, batchStart + batchSize)]
            try pool.write { db in
                let s = RawStatement(try db.cachedStatement(sql: sql))
                for event in batch {
                    guard case .raw(let connectionId, let sequence, let bytes) = event.fields else { continue }
                    s.reset()
                    s.bind(1, event.scopeId)
                    s.bind(2, event.sourceTruthTime.microseconds)
                    s.bind(3, event.canonicalTruthTime.microseconds)
                    s.bind(4, event.eventId)
                    s.bind(5, connectionId)
                    s.bind(6, sequence)
                    s.bind(7, blob: bytes)
                    _ = try s.step(db)
                }
            }
        }
        return ContinuousClock.now - start
    }
}
