import Logging
import NovaCore
import PostgresNIO

/// Portable mode's housekeeping inside `nova serve`: creates the coming days' partitions ahead of
/// time and applies `hypertable.retentionAfter` by dropping whole day partitions of the lanes.
///
/// Before a lane partition is dropped, its ids are deleted from `eventIndex`, so an id stays in the
/// dedupe index exactly as long as its event is stored, whatever its source time (a device with a
/// wrong clock must not make a later resend look new, nor an old id outlive its event). Then the
/// `eventIndex` partitions older than the cutoff that are left empty are dropped.
struct PartitionMaintenance {
    let store: PostgresStore
    /// Days created ahead of today.
    var daysAhead: Int64 = 3
    var interval: Duration = .seconds(3600)

    func run() async throws {
        while !Task.isCancelled {
            do {
                try await runOnce()
            } catch where !Task.isCancelled {
                store.logger.error("partition maintenance failed", metadata: ["error": "\(store.mapError(error).message)"])
            }
            try await Task.sleep(for: interval)
        }
    }

    /// Takes dropped events out of `laneStats`: the count, and the first times, which move to the
    /// oldest event left (two index lookups).
    static func shrinkStats(_ conn: PostgresConnection, table: String, lane: Lane, scope: String, removed: Int64, logger: Logger) async throws {
        try await conn.query(PostgresQuery(unsafeSQL: """
            UPDATE "laneStats" SET "count" = "count" - $3,
                "firstCanonicalTruthTime" = COALESCE((SELECT min("canonicalTruthTime") FROM "\(table)" WHERE "scopeId" = $1), "firstCanonicalTruthTime"),
                "firstSourceTruthTime" = COALESCE((SELECT min("sourceTruthTime") FROM "\(table)" WHERE "scopeId" = $1), "firstSourceTruthTime")
            WHERE "scopeId" = $1 AND "lane" = $2
            """, binds: {
                var b = PostgresBindings()
                b.append(scope)
                b.append(lane.rawValue)
                b.append(removed)
                return b
            }()), logger: logger)
        try await conn.query(#"DELETE FROM "laneStats" WHERE "count" <= 0"#, logger: logger)
    }

    /// One pass: create ahead, then apply retention. Returns the partitions dropped.
    @discardableResult
    func runOnce(now: Timestamp = .now()) async throws -> [String] {
        let client = store.client
        let logger = store.logger
        let today = PartitionCatalog.day(of: now)
        let coming = Set(today...(today + daysAhead))
        for table in PartitionCatalog.parents {
            try await store.partitions.ensure(table, days: coming, store: store)
        }
        let cutoffRows = try await client.query(
            "SELECT (\(PostgresTimestamp(value: now))::timestamptz - \(store.location.hypertable.retentionAfter)::interval)", logger: logger
        ).collect()
        guard let cutoffCell = cutoffRows.first?.first else { return [] }
        let cutoffDay = PartitionCatalog.day(of: try cutoffCell.timestamp())
        var dropped = [String]()
        var deletedEvents: Int64 = 0
        for lane in Lane.allCases {
            let table = LaneSQL(lane).table
            for (name, day) in store.partitions.partitions(of: table) where day + 1 <= cutoffDay {
                let removedCount = try await client.withTransaction(logger: logger) { conn -> Int64 in
                    try await conn.query(PostgresQuery(unsafeSQL: """
                        DELETE FROM "eventIndex" e USING "\(name)" p
                        WHERE e."sourceTruthTime" = p."sourceTruthTime" AND e."eventId" = p."eventId"
                        """), logger: logger)
                    var removed = [(String, Int64)]()
                    let counts = try await conn.query(PostgresQuery(unsafeSQL: #"SELECT "scopeId", count(*) FROM "\#(name)" GROUP BY "scopeId""#), logger: logger)
                    for try await (scope, count) in counts.decode((String, Int64).self) { removed.append((scope, count)) }
                    try await conn.query(PostgresQuery(unsafeSQL: #"DROP TABLE "\#(name)""#), logger: logger)
                    for (scope, count) in removed {
                        try await Self.shrinkStats(conn, table: table, lane: lane, scope: scope, removed: count, logger: logger)
                    }
                    return removed.reduce(0) { $0 + $1.1 }
                }
                deletedEvents += removedCount
                store.partitions.forget(name)
                dropped.append(name)
            }
        }
        for (name, day) in store.partitions.partitions(of: "eventIndex") where day + 1 <= cutoffDay {
            let empty = try await client.query(PostgresQuery(unsafeSQL: #"SELECT NOT EXISTS (SELECT 1 FROM "\#(name)")"#), logger: logger)
                .collect().first?.decode(Bool.self) ?? false
            if empty {
                try await client.query(PostgresQuery(unsafeSQL: #"DROP TABLE IF EXISTS "\#(name)""#), logger: logger)
                store.partitions.forget(name)
                dropped.append(name)
            }
        }
        if !dropped.isEmpty {
            // A warning, not a notice: history migrated into a hub whose retention is shorter
            // than it goes here at the first start, and an operator must be able to see that.
            logger.warning("retention deleted events older than database.timescaledb.hypertable.retentionAfter", metadata: [
                "retentionAfter": "\(store.location.hypertable.retentionAfter)", "events": "\(deletedEvents)", "partitions": "\(dropped.count)",
                "cutoff": "\(Timestamp(microseconds: cutoffDay * PartitionCatalog.dayMicros))",
            ])
        }
        return dropped
    }
}
