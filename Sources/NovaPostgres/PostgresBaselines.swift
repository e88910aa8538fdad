import Foundation
import Logging
import NIOCore
import NovaCore
import PostgresNIO

/// Baselines for `nova bench ingest` on PostgreSQL, measured in the same run as NOVA's hub ingest.
public enum PostgresBaselines {
    /// The COPY baselines' table: raw rows with a primary key on `eventId` and both ordering indexes.
    public static let copyTableDDL = [
        """
        CREATE TABLE "baselineRaw" ("eventId" BYTEA PRIMARY KEY, "scopeId" TEXT COLLATE "C" NOT NULL,
            "sourceTruthTime" TIMESTAMPTZ NOT NULL, "canonicalTruthTime" TIMESTAMPTZ NOT NULL,
            "connectionId" TEXT COLLATE "C" NOT NULL, "sequence" BIGINT NOT NULL, "bytes" BYTEA NOT NULL)
        """,
        #"CREATE INDEX ON "baselineRaw" ("scopeId", "sourceTruthTime", "connectionId", "sequence", "eventId")"#,
        #"CREATE INDEX ON "baselineRaw" ("scopeId", "canonicalTruthTime", "connectionId", "sequence", "eventId")"#,
    ]

    /// `COPY` of the same raw rows into a table with a primary key on `eventId` and both ordering
    /// indexes, in batches, one transaction each: what a hand-written bulk writer achieves.
    public static func copyInsert(_ events: [Event], batchSize: Int, location: PostgresLocation, logger: Logger) async throws -> Duration {
        try await withClient(location, logger: logger) { client in
            for statement in copyTableDDL { _ = try await client.query(PostgresQuery(unsafeSQL: statement)) }
            let start = ContinuousClock.now
            for batchStart in stride(from: 0, to: events.count, by: batchSize) {
                let batch = events[batchStart..<min(events.count, batchStart + batchSize)]
                try await client.withTransaction(logger: logger) { conn in
                    try await conn.copyFrom(
                        table: "baselineRaw", columns: ["eventId", "scopeId", "sourceTruthTime", "canonicalTruthTime", "connectionId", "sequence", "bytes"],
                        logger: logger
                    ) { writer in
                        var buffer = ByteBuffer()
                        for event in batch {
                            guard case .raw(let connectionId, let sequence, let bytes) = event.fields else { continue }
                            buffer.writeString("\\\\x\(event.eventId.hex)\t\(event.scopeId)\t\(event.sourceTruthTime.rfc3339)\t\(event.canonicalTruthTime.rfc3339)\t\(connectionId)\t\(sequence)\t\\\\x\(hex(bytes))\n")
                        }
                        try await writer.write(buffer)
                    }
                }
            }
            return ContinuousClock.now - start
        }
    }

    /// The seed plan's own design: `eventId TEXT PRIMARY KEY` tables, one transaction with two
    /// INSERTs per event (dedupe table, then lane table), over `connections` concurrent connections.
    public static func seedDesign(_ events: [Event], connections: Int, location: PostgresLocation, logger: Logger) async throws -> Duration {
        var pooled = location
        pooled.pool.maxSize = connections
        return try await withClient(pooled, logger: logger) { client in
            _ = try await client.query(#"CREATE TABLE "seedEventIndex" ("eventId" TEXT PRIMARY KEY, "firstSeen" TIMESTAMPTZ DEFAULT NOW())"#)
            _ = try await client.query("""
                CREATE TABLE "seedRawEvents" ("eventId" TEXT PRIMARY KEY REFERENCES "seedEventIndex" ("eventId"), "scopeId" TEXT NOT NULL,
                    "sourceTruthTime" TIMESTAMPTZ NOT NULL, "canonicalTruthTime" TIMESTAMPTZ NOT NULL, "connectionId" TEXT NOT NULL,
                    "sequence" BIGINT NOT NULL, "bytes" BYTEA NOT NULL)
                """)
            _ = try await client.query(#"CREATE INDEX ON "seedRawEvents" ("sourceTruthTime", "connectionId", "sequence", "eventId")"#)
            _ = try await client.query(#"CREATE INDEX ON "seedRawEvents" ("canonicalTruthTime", "connectionId", "sequence", "eventId")"#)
            let start = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<connections {
                    group.addTask {
                        for k in stride(from: worker, to: events.count, by: connections) {
                            let event = events[k]
                            guard case .raw(let connectionId, let sequence, let bytes) = event.fields else { continue }
                            try await client.withTransaction(logger: logger) { conn in
                                _ = try await conn.query(#"INSERT INTO "seedEventIndex" ("eventId") VALUES (\#(event.eventId.hex))"#, logger: logger)
                                _ = try await conn.query("""
                                    INSERT INTO "seedRawEvents" VALUES (\(event.eventId.hex), \(event.scopeId), \(PostgresTimestamp(value: event.sourceTruthTime)),
                                    \(PostgresTimestamp(value: event.canonicalTruthTime)), \(connectionId), \(sequence), \(PostgresBytes(bytes: bytes)))
                                    """, logger: logger)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            return ContinuousClock.now - start
        }
    }

    /// Creates a database for a benchmark run on the server of `location` and returns its location.
    public static func createDatabase(on location: PostgresLocation, logger: Logger) async throws -> PostgresLocation {
        var created = location
        created.database = "nova_bench_\(UUID().uuidString.prefix(8).lowercased())"
        let name = created.database
        try await withClient(location, logger: logger) { client in
            _ = try await client.query(PostgresQuery(unsafeSQL: #"CREATE DATABASE "\#(name)" TEMPLATE template0 ENCODING 'UTF8'"#))
        }
        return created
    }

    public static func dropDatabase(_ created: PostgresLocation, server: PostgresLocation, logger: Logger) async {
        let name = created.database
        try? await withClient(server, logger: logger) { client in
            _ = try await client.query(PostgresQuery(unsafeSQL: #"DROP DATABASE IF EXISTS "\#(name)" WITH (FORCE)"#))
        }
    }

    static func withClient<T: Sendable>(_ location: PostgresLocation, logger: Logger, _ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let client = PostgresClient(configuration: location.clientConfiguration(), backgroundLogger: adminLogger(logger))
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            let result = try await body(client)
            group.cancelAll()
            return result
        }
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The query benchmark's baseline on PostgreSQL: the same ordered range SQL the store runs (the
/// same prepared statements, on a pool set up as the store's read pool), through a bare
/// `PostgresClient`, counting rows without decoding them into events.
public final class PostgresBareQuery: Sendable {
    let client: PostgresClient
    let prepared = PreparedReads()
    private let running: Task<Void, Never>

    public init(location: PostgresLocation, connections: Int, logger: Logger) {
        let configuration = location.clientConfiguration(maximumConnections: connections, reads: true)
        let client = PostgresClient(configuration: configuration, backgroundLogger: adminLogger(logger))
        self.client = client
        running = Task { await client.run() }
    }

    public func count(_ read: LaneRead) async throws -> Int {
        let prepared = prepared
        return try await client.withConnection { conn in
            var n = 0
            try await PostgresStore.forEachRow(of: read, on: conn, prepared: prepared) { _ in
                n += 1
                return true
            }
            return n
        }
    }

    public func close() {
        running.cancel()
    }
}

extension PostgresBaselines {
    /// The server's version and the store's mode, for a benchmark's report (nil when the
    /// database holds no NOVA store).
    public static func describe(_ location: PostgresLocation, logger: Logger) async -> String? {
        try? await withClient(location, logger: logger) { client in
            let rows = try await client.query("""
                SELECT current_setting('server_version'), (SELECT "value" FROM "novaStore" WHERE "key" = 'mode'),
                    (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb')
                """).collect()
            guard let (version, mode, timescale) = try rows.first?.decode((String, String?, String?).self), let mode else { return nil }
            return "PostgreSQL \(version), \(mode) mode" + (timescale.map { " (TimescaleDB \($0))" } ?? "")
        }
    }

    /// `VACUUM (ANALYZE)` the database after a bulk load, so that measurements do not race
    /// autovacuum and both sides of a comparison see the same settled tables.
    public static func settle(_ location: PostgresLocation, logger: Logger) async throws {
        try await withClient(location, logger: logger) { client in
            _ = try await client.query("VACUUM (ANALYZE)")
        }
    }
}

/// The background logger of a short-lived client whose first query races its `run()` (which
/// postgres-nio reports as a warning, though the query just waits): errors only.
func adminLogger(_ logger: Logger) -> Logger {
    var quiet = logger
    quiet.logLevel = .error
    return quiet
}
