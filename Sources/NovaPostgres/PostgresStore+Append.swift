import Logging
import NIOCore
import NovaCore
import PostgresNIO

extension PostgresStore {
    /// Appends a batch in one transaction: `COPY` into a session staging table, then one set-based
    /// statement that dedupes through `eventIndex`, numbers the accepted events (`ingestSeq`, in
    /// batch order, gap-free) and inserts them into their lane tables; never a round trip per event.
    ///
    /// `ingestSeq` is gap-free in commit order because each transaction takes the counter's row lock
    /// before it inserts and holds it until it commits; the staging COPY runs before, concurrently.
    public func append(_ events: [Event]) async throws(StoreError) -> AppendResult {
        if events.isEmpty { return AppendResult(ingestSeqs: []) }
        let mode = try ensureReady()
        do {
            return try await appendOnce(events, mode: mode)
        } catch where sqlState(error) == "23514" && mode == .partitioned {
            // Retention dropped a partition between our check and the insert: recreate and retry.
            do {
                try await partitions.load(self)
                return try await appendOnce(events, mode: mode)
            } catch {
                throw mapError(error)
            }
        } catch {
            throw mapError(error)
        }
    }

    private func appendOnce(_ events: [Event], mode: PostgresSchema.Mode) async throws -> AppendResult {
        if mode == .partitioned { try await ensurePartitions(for: events) }
        let lanes = Set(events.map(\.lane))
        let logger = logger
        let rows: [Accepted] = try await connection { conn in try await conn.withTransaction(logger: logger) { conn in
            try await conn.query(Self.createStaging, logger: logger)
            try await conn.copyFrom(table: "novaStaging", columns: Self.stagingColumns, logger: logger) { writer in
                var buffer = ByteBuffer()
                buffer.reserveCapacity(1 << 20)
                for (ord, event) in events.enumerated() {
                    Self.writeCopyRow(ord: ord, event: event, into: &buffer)
                    if buffer.readableBytes > 1 << 20 {
                        try await writer.write(buffer)
                        buffer.clear()
                    }
                }
                if buffer.readableBytes > 0 { try await writer.write(buffer) }
            }
            let base = try await conn.query(#"SELECT "value" FROM "novaCounter" WHERE "name" = 'ingestSeq' FOR UPDATE"#, logger: logger)
                .collect().first?.decode(Int64.self) ?? 0
            var accepted = [Accepted]()
            let result = try await conn.query(PostgresQuery(unsafeSQL: Self.insertSQL(lanes: lanes), binds: try bindings(base)), logger: logger)
            for try await (ord, seq) in result.decode((Int32, Int64).self) { accepted.append(Accepted(ord: Int(ord), seq: seq)) }
            if !accepted.isEmpty {
                try await conn.query(#"UPDATE "novaCounter" SET "value" = \#(base + Int64(accepted.count)) WHERE "name" = 'ingestSeq'"#, logger: logger)
                try await Self.updateStats(conn, events: accepted.map { events[$0.ord] }, logger: logger)
            }
            return accepted
        } }
        var seqs = [Int64?](repeating: nil, count: events.count)
        for row in rows { seqs[row.ord] = row.seq }
        return AppendResult(ingestSeqs: seqs)
    }

    struct Accepted: Sendable {
        var ord: Int
        var seq: Int64
    }

    private func ensurePartitions(for events: [Event]) async throws {
        var byTable = [String: Set<Int64>]()
        for event in events {
            byTable["eventIndex", default: []].insert(PartitionCatalog.day(of: event.sourceTruthTime))
            byTable[LaneSQL(event.lane).table, default: []].insert(PartitionCatalog.day(of: event.canonicalTruthTime))
        }
        for (table, days) in byTable {
            try await partitions.ensure(table, days: days, store: self)
        }
    }

    static let stagingColumns = [
        "ord", "lane", "scopeId", "sourceTruthTime", "canonicalTruthTime", "eventId", "connectionId", "sequence", "bytes", "s1", "s2", "s3", "payload",
    ]

    /// One staging table per session for every lane; lane fields without a column of their own go
    /// to s1…s3 in the lane's field order.
    static let createStaging: PostgresQuery = """
        CREATE TEMP TABLE IF NOT EXISTS "novaStaging" (
            "ord" INT NOT NULL, "lane" SMALLINT NOT NULL, "scopeId" TEXT NOT NULL, "sourceTruthTime" TIMESTAMPTZ NOT NULL,
            "canonicalTruthTime" TIMESTAMPTZ NOT NULL, "eventId" BYTEA NOT NULL, "connectionId" TEXT, "sequence" BIGINT,
            "bytes" BYTEA, "s1" TEXT, "s2" TEXT, "s3" TEXT, "payload" TEXT) ON COMMIT DELETE ROWS
        """

    /// The dedupe-number-insert statement for a batch holding `lanes`; $1 is the counter's value.
    static func insertSQL(lanes: Set<Lane>) -> String {
        var sql = """
            WITH cand AS (
                SELECT DISTINCT ON ("eventId") "ord", "lane", "sourceTruthTime", "eventId" FROM "novaStaging" ORDER BY "eventId", "ord"
            ), ins AS (
                INSERT INTO "eventIndex" ("sourceTruthTime", "eventId", "lane")
                SELECT "sourceTruthTime", "eventId", "lane" FROM cand ON CONFLICT DO NOTHING RETURNING "eventId"
            ), acc AS (
                SELECT c."ord", c."lane", $1::int8 + row_number() OVER (ORDER BY c."ord") AS "seq"
                FROM cand c JOIN ins ON ins."eventId" = c."eventId"
            )
            """
        for lane in lanes.sorted() {
            let t = LaneSQL(lane)
            let staged = lane == .raw ? ["connectionId", "sequence", "bytes"] : Array(["s1", "s2", "s3"].prefix(lane.fieldNames.count - 1)) + ["payload"]
            let columns = (["ingestSeq"] + t.columns).map { "\"\($0)\"" }.joined(separator: ", ")
            let values = (["a.\"seq\""] + LaneSQL.commonColumns.map { "s.\"\($0)\"" } + staged.map { "s.\"\($0)\"" }).joined(separator: ", ")
            sql += """
                , l\(lane.rank) AS (
                    INSERT INTO "\(t.table)" (\(columns))
                    SELECT \(values) FROM acc a JOIN "novaStaging" s ON s."ord" = a."ord" WHERE a."lane" = \(lane.rank)
                )
                """
        }
        return sql + #" SELECT "ord", "seq" FROM acc"#
    }

    /// One row of `COPY … FROM STDIN` text format: tab-separated, `\N` for NULL, backslash escapes.
    static func writeCopyRow(ord: Int, event: Event, into b: inout ByteBuffer) {
        func tab() { b.writeInteger(UInt8(ascii: "\t")) }
        func null() { b.writeStaticString("\\N") }
        func text(_ s: String) {
            var s = s
            s.withUTF8 { utf8 in
                var start = 0
                for (k, c) in utf8.enumerated() where c == 0x5C || c == 0x09 || c == 0x0A || c == 0x0D {
                    b.writeBytes(UnsafeBufferPointer(rebasing: utf8[start..<k]))
                    switch c {
                    case 0x5C: b.writeStaticString("\\\\")
                    case 0x09: b.writeStaticString("\\t")
                    case 0x0A: b.writeStaticString("\\n")
                    default: b.writeStaticString("\\r")
                    }
                    start = k + 1
                }
                b.writeBytes(UnsafeBufferPointer(rebasing: utf8[start...]))
            }
        }
        func bytea(_ raw: UnsafeRawBufferPointer) {
            b.writeStaticString("\\\\x")
            let digits: StaticString = "0123456789abcdef"
            for byte in raw {
                b.writeInteger(digits.utf8Start[Int(byte >> 4)])
                b.writeInteger(digits.utf8Start[Int(byte & 15)])
            }
        }
        b.writeString(String(ord)); tab()
        b.writeString(String(event.lane.rank)); tab()
        text(event.scopeId); tab()
        b.writeString(event.sourceTruthTime.rfc3339); tab()
        b.writeString(event.canonicalTruthTime.rfc3339); tab()
        event.eventId.withUnsafeBytes { bytea($0) }
        var strings: [String] = []
        var payload: CanonicalPayload?
        switch event.fields {
        case .raw(let connectionId, let sequence, let bytes):
            tab(); text(connectionId)
            tab(); b.writeString(String(sequence))
            tab(); bytes.withUnsafeBytes { bytea($0) }
        case .parsed(let a, let c, let d, let p): strings = [a, c, d]; payload = p
        case .ui(let a, let p): strings = [a]; payload = p
        case .command(let a, let c, let d, let p): strings = [a, c, d]; payload = p
        case .metadata(let a, let p): strings = [a]; payload = p
        }
        if event.lane != .raw {
            tab(); null(); tab(); null(); tab(); null()
        }
        for k in 0..<3 {
            tab()
            if k < strings.count { text(strings[k]) } else { null() }
        }
        tab()
        if let payload { text(payload.description) } else { null() }
        b.writeInteger(UInt8(ascii: "\n"))
    }

    /// Folds the accepted events into `laneStats`, one upsert per scope and lane.
    static func updateStats(_ conn: PostgresConnection, events: [Event], logger: Logger) async throws {
        var aggregates = [String: (scope: String, lane: Lane, count: Int64, fc: Timestamp, lc: Timestamp, fs: Timestamp, ls: Timestamp)]()
        for e in events {
            let key = "\(e.lane.rank)\u{0}\(e.scopeId)"
            if var a = aggregates[key] {
                a.count += 1
                a.fc = min(a.fc, e.canonicalTruthTime); a.lc = max(a.lc, e.canonicalTruthTime)
                a.fs = min(a.fs, e.sourceTruthTime); a.ls = max(a.ls, e.sourceTruthTime)
                aggregates[key] = a
            } else {
                aggregates[key] = (e.scopeId, e.lane, 1, e.canonicalTruthTime, e.canonicalTruthTime, e.sourceTruthTime, e.sourceTruthTime)
            }
        }
        for a in aggregates.values {
            try await conn.query("""
                INSERT INTO "laneStats" VALUES (\(a.scope), \(a.lane.rawValue), \(a.count), \(PostgresTimestamp(value: a.fc)),
                    \(PostgresTimestamp(value: a.lc)), \(PostgresTimestamp(value: a.fs)), \(PostgresTimestamp(value: a.ls)))
                ON CONFLICT ("scopeId", "lane") DO UPDATE SET
                    "count" = "laneStats"."count" + excluded."count",
                    "firstCanonicalTruthTime" = LEAST("laneStats"."firstCanonicalTruthTime", excluded."firstCanonicalTruthTime"),
                    "lastCanonicalTruthTime" = GREATEST("laneStats"."lastCanonicalTruthTime", excluded."lastCanonicalTruthTime"),
                    "firstSourceTruthTime" = LEAST("laneStats"."firstSourceTruthTime", excluded."firstSourceTruthTime"),
                    "lastSourceTruthTime" = GREATEST("laneStats"."lastSourceTruthTime", excluded."lastSourceTruthTime")
                """, logger: logger)
        }
    }
}

/// Bindings for a hand-written parameterized statement.
func bindings(_ values: any PostgresThrowingDynamicTypeEncodable...) throws -> PostgresBindings {
    var b = PostgresBindings()
    for value in values { try b.append(value) }
    return b
}
