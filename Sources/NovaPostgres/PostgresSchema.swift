import Foundation
import Logging
import NovaCore
import PostgresNIO

/// The hub store's schema and its versioned migrations.
///
/// Two modes, chosen when the store is created and kept for its life:
/// - `timescaledb`: one hypertable per lane on `canonicalTruthTime`, `eventIndex` a hypertable on
///   `sourceTruthTime`, compression (segment by `scopeId`, order by the contract) and retention
///   policies, when the extension can be loaded;
/// - `partitioned`: the same tables as native declarative range partitions by UTC day, created on
///   demand and ahead by ``PartitionMaintenance``, and dropped by its retention.
///
/// Why `eventIndex`: a unique index on a table partitioned by `canonicalTruthTime` must include it,
/// and two copies of an event may have different canonical times, so lane tables cannot dedupe.
/// Both copies always share `sourceTruthTime` (it is hashed into the id), so the global dedupe key
/// is (`sourceTruthTime`, `eventId`): it grows at its end like the data, and is partitioned by
/// source time. Ids are 32 raw bytes, not 64 hex characters. Lane tables are keyed by their unique
/// canonical-order index, which includes (`canonicalTruthTime`, `eventId`).
///
/// Payloads are TEXT holding the canonical JSON, not JSONB: JSONB cannot hold `\u0000` (which
/// JSON and the edge allow) and rewrites numbers and key order, so the hub could not answer with
/// the edge's bytes. Analysts can still cast `payload::jsonb` in SQL.
enum PostgresSchema {
    static let version = 5

    /// The statements that bring a store from version `n - 1` to `n`, for each `n` after 1.
    ///
    /// v2: a commit-order index on each lane table. Streams and the commit feed read "the events
    /// with `ingestSeq` in (n, n + k]", which must not scan every partition. BRIN, not B-tree:
    /// rows arrive in `ingestSeq` order, so block ranges summarize it exactly, and maintaining a
    /// BRIN costs almost nothing, where a fifth B-tree cost a quarter of the ingest rate (measured).
    ///
    /// v3: sync. The watermark of every (siteId, storeId) that ships here (sync.md).
    ///
    /// v4: completeness per scope: what each site last reported pending per scope, and for its
    /// other scopes.
    ///
    /// v5: TimescaleDB mode: without the time-only index `create_hypertable` adds by default.
    /// Reads run generic plans, which cannot see that `scopeId = $1` is selective, and chose that
    /// index with `scopeId` as a filter and an Incremental Sort over every scope's events in the
    /// range, where the scope-leading ordering index gives them in order. It was also one more
    /// B-tree for every insert; the ordering indexes and `eventIndex`'s key lead with the time
    /// where it matters. (No such index exists in the partitioned mode.)
    static let migrations: [Int: [String]] = [
        2: Lane.allCases.map { lane in
            let table = LaneSQL(lane).table
            return "CREATE INDEX IF NOT EXISTS \(quote(table + "_commit_order")) ON \(quote(table)) USING brin (\"ingestSeq\")"
        },
        3: [
            """
            CREATE TABLE IF NOT EXISTS "syncSites" (
                "siteId" TEXT COLLATE "C" NOT NULL, "storeId" TEXT COLLATE "C" NOT NULL, "ackedSeq" BIGINT NOT NULL, "lastEventId" BYTEA,
                "completeThrough" TIMESTAMPTZ, "pendingEvents" BIGINT NOT NULL, "lastContactAt" TIMESTAMPTZ NOT NULL,
                "batchesApplied" BIGINT NOT NULL, "eventsApplied" BIGINT NOT NULL,
                PRIMARY KEY ("siteId", "storeId"))
            """,
        ],
        4: [
            #"ALTER TABLE "syncSites" ADD COLUMN IF NOT EXISTS "otherScopesFrom" TIMESTAMPTZ"#,
            """
            CREATE TABLE IF NOT EXISTS "syncSiteScopes" (
                "siteId" TEXT COLLATE "C" NOT NULL, "storeId" TEXT COLLATE "C" NOT NULL, "scopeId" TEXT COLLATE "C" NOT NULL,
                "pendingFrom" TIMESTAMPTZ NOT NULL, PRIMARY KEY ("siteId", "storeId", "scopeId"))
            """,
        ],
        5: [#"DROP INDEX IF EXISTS "eventIndex_sourceTruthTime_idx""#]
            + Lane.allCases.map { #"DROP INDEX IF EXISTS "\#(LaneSQL($0).table)_canonicalTruthTime_idx""# },
    ]

    static func migrate(_ conn: PostgresConnection, from applied: Int, logger: Logger) async throws {
        guard applied < version else { return }
        for n in (applied + 1)...version {
            for statement in migrations[n] ?? [] {
                try await conn.query(PostgresQuery(unsafeSQL: statement), logger: logger)
            }
        }
        try await conn.query(#"UPDATE "novaStore" SET "value" = \#(String(version)) WHERE "key" = 'schemaVersion'"#, logger: logger)
        logger.notice("hub schema migrated", metadata: ["from": "v\(applied)", "to": "v\(version)"])
    }

    enum Mode: String, Sendable {
        case timescaledb
        case partitioned
    }

    static func quote(_ name: String) -> String { "\"\(name)\"" }

    /// Column definitions of a lane table (every text column bytewise-collated).
    static func laneColumns(_ lane: Lane) -> [String] {
        let own = lane.fieldNames.map { name in
            switch name {
            case "sequence": "\"sequence\" BIGINT NOT NULL"
            case "bytes": "\"bytes\" BYTEA NOT NULL"
            case "payload": "\"payload\" TEXT NOT NULL"
            default: "\(quote(name)) TEXT COLLATE \"C\" NOT NULL"
            }
        }
        return [
            "\"ingestSeq\" BIGINT NOT NULL", "\"scopeId\" TEXT COLLATE \"C\" NOT NULL", "\"sourceTruthTime\" TIMESTAMPTZ NOT NULL",
            "\"canonicalTruthTime\" TIMESTAMPTZ NOT NULL", "\"eventId\" BYTEA NOT NULL",
        ] + own
    }

    /// The statements that create schema v1 in `mode`.
    static func createV1(mode: Mode, hypertable: NovaConfiguration.Hypertable) -> [String] {
        let partitioned = mode == .partitioned
        var sql = [
            #"CREATE TABLE "novaCounter" ("name" TEXT PRIMARY KEY, "value" BIGINT NOT NULL)"#,
            #"INSERT INTO "novaCounter" VALUES ('ingestSeq', 0)"#,
            """
            CREATE TABLE "laneStats" (
                "scopeId" TEXT COLLATE "C" NOT NULL, "lane" TEXT NOT NULL, "count" BIGINT NOT NULL,
                "firstCanonicalTruthTime" TIMESTAMPTZ NOT NULL, "lastCanonicalTruthTime" TIMESTAMPTZ NOT NULL,
                "firstSourceTruthTime" TIMESTAMPTZ NOT NULL, "lastSourceTruthTime" TIMESTAMPTZ NOT NULL,
                PRIMARY KEY ("scopeId", "lane"))
            """,
            """
            CREATE TABLE "eventIndex" (
                "sourceTruthTime" TIMESTAMPTZ NOT NULL, "eventId" BYTEA NOT NULL, "lane" SMALLINT NOT NULL,
                PRIMARY KEY ("sourceTruthTime", "eventId"))\(partitioned ? #" PARTITION BY RANGE ("sourceTruthTime")"# : "")
            """,
        ]
        for lane in Lane.allCases {
            let t = LaneSQL(lane)
            let by = partitioned ? #" PARTITION BY RANGE ("canonicalTruthTime")"# : ""
            sql.append("CREATE TABLE \(quote(t.table)) (\(laneColumns(lane).joined(separator: ", ")))\(by)")
            for timebase in Timebase.allCases {
                let unique = timebase == .canonical ? "UNIQUE " : ""
                let columns = (["scopeId"] + t.orderColumns(timebase)).map(quote).joined(separator: ", ")
                sql.append("CREATE \(unique)INDEX \(quote(t.indexName(timebase))) ON \(quote(t.table)) (\(columns))")
            }
        }
        if mode == .timescaledb {
            sql.append(
                #"SELECT create_hypertable('"eventIndex"', 'sourceTruthTime', chunk_time_interval => INTERVAL '\#(hypertable.chunkInterval)', create_default_indexes => false)"#)
            for lane in Lane.allCases {
                let t = LaneSQL(lane)
                let order = t.orderColumns(.canonical).map(quote).joined(separator: ", ")
                sql += [
                    "SELECT create_hypertable('\(quote(t.table))', 'canonicalTruthTime', chunk_time_interval => INTERVAL '\(hypertable.chunkInterval)', create_default_indexes => false)",
                    "ALTER TABLE \(quote(t.table)) SET (timescaledb.compress, timescaledb.compress_segmentby = '\"scopeId\"', timescaledb.compress_orderby = '\(order)')",
                    "SELECT add_compression_policy('\(quote(t.table))', INTERVAL '\(hypertable.compressionAfter)')",
                    "SELECT add_retention_policy('\(quote(t.table))', INTERVAL '\(hypertable.retentionAfter)')",
                ]
            }
        }
        return sql
    }

    /// Creates the store or brings its schema up to date, under an advisory lock so that several
    /// `nova serve` processes starting together do it once. Returns the store's identity.
    static func prepare(_ client: PostgresClient, location: PostgresLocation, create: Bool, logger: Logger) async throws -> (storeId: String, mode: Mode) {
        try await client.withTransaction(logger: logger) { conn in
            try await conn.query(#"SELECT pg_advisory_xact_lock(hashtext('nova.schema'))"#, logger: logger)
            let exists = try await conn.query(#"SELECT to_regclass('"novaStore"') IS NOT NULL"#, logger: logger)
                .collect().first?.decode(Bool.self) ?? false
            if !exists {
                let ours = try await conn.query(#"SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename IN ('rawEvents', 'eventIndex')"#, logger: logger)
                    .collect().first?.decode(Int64.self) ?? 0
                if ours > 0 {
                    throw StoreError(.unusable, "\(location): has NOVA-like tables but no novaStore table; not a NOVA store, refusing to touch it")
                }
                guard create else {
                    throw StoreError(.unusable, "\(location): holds no NOVA store (create one with `nova schema create \(location)`)")
                }
                let mode = try await chooseMode(conn, logger: logger)
                try await conn.query(#"CREATE TABLE "novaStore" ("key" TEXT PRIMARY KEY, "value" TEXT NOT NULL)"#, logger: logger)
                for statement in createV1(mode: mode, hypertable: location.hypertable) {
                    try await conn.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                for n in 2...version {
                    for statement in migrations[n] ?? [] { try await conn.query(PostgresQuery(unsafeSQL: statement), logger: logger) }
                }
                let storeId = UUID().uuidString.lowercased()
                try await conn.query("""
                    INSERT INTO "novaStore" VALUES ('format', 'nova'), ('storeId', \(storeId)), ('schemaVersion', \(String(version))),
                    ('mode', \(mode.rawValue)), ('createdAt', \(Timestamp.now().rfc3339))
                    """, logger: logger)
                logger.notice("hub store created", metadata: ["store": "\(location)", "mode": "\(mode.rawValue)", "storeId": "\(storeId)"])
                return (storeId, mode)
            }
            var meta = [String: String]()
            for try await (key, value) in try await conn.query(#"SELECT "key", "value" FROM "novaStore""#, logger: logger).decode((String, String).self) {
                meta[key] = value
            }
            guard meta["format"] == "nova", let storeId = meta["storeId"], let mode = meta["mode"].flatMap(Mode.init(rawValue:)),
                  let applied = meta["schemaVersion"].flatMap(Int.init)
            else {
                throw StoreError(.unusable, "\(location): the novaStore table is not NOVA's; refusing to touch this database")
            }
            guard applied <= version else {
                throw StoreError(.unusable, "\(location): schema v\(applied) is newer than this nova (it knows up to v\(version)); upgrade nova")
            }
            try await migrate(conn, from: applied, logger: logger)
            return (storeId, mode)
        }
    }

    /// TimescaleDB when the extension is installed and loadable, else native partitioning.
    private static func chooseMode(_ conn: PostgresConnection, logger: Logger) async throws -> Mode {
        let available = try await conn.query(#"SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"#, logger: logger)
            .collect().first?.decode(Int64.self) ?? 0
        guard available > 0 else { return .partitioned }
        // Without the preload, CREATE EXTENSION fails with FATAL and drops the connection.
        let preload = try await conn.query("SELECT current_setting('shared_preload_libraries')", logger: logger)
            .collect().first?.decode(String.self) ?? ""
        guard preload.contains("timescaledb") else {
            logger.warning("timescaledb is installed but not in shared_preload_libraries; using native partitioning")
            return .partitioned
        }
        // A failing CREATE EXTENSION (not preloaded, no privilege) must not abort the transaction.
        try await conn.query("SAVEPOINT nova_tsdb", logger: logger)
        do {
            try await conn.query("CREATE EXTENSION IF NOT EXISTS timescaledb", logger: logger)
            try await conn.query("RELEASE SAVEPOINT nova_tsdb", logger: logger)
            return .timescaledb
        } catch {
            try await conn.query("ROLLBACK TO SAVEPOINT nova_tsdb", logger: logger)
            logger.warning("timescaledb is installed but cannot be loaded; using native partitioning", metadata: ["error": "\(String(reflecting: error))"])
            return .partitioned
        }
    }
}
