import Logging
import NIOCore
import NovaCore
import PostgresNIO

extension PostgresStore {
    /// Appends a batch with one statement, atomic on its own: the events travel as binary arrays
    /// (one per column, per lane), and the statement dedupes them through `eventIndex`, numbers the
    /// accepted ones (`ingestSeq`, in batch order, gap-free), inserts them into their lane tables,
    /// advances the counter and folds them into `laneStats`. One round trip per batch, never one per
    /// event, and no staging table. When it accepted anything it notifies ``commitChannel``, which
    /// PostgreSQL delivers at commit.
    ///
    /// `ingestSeq` is gap-free in commit order because the statement takes the counter's row lock
    /// (`FOR UPDATE`) and holds it until it commits. Every candidate row is joined with that locked
    /// row, so no id enters `eventIndex` before the lock is held: two batches with common ids
    /// therefore queue on the counter instead of deadlocking on each other's index entries. Copies
    /// of one event inside a batch are folded here first, so the statement sees each id once.
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
        var seen = Set<EventID>()
        var columns = [Lane: LaneColumns]()
        for (ord, event) in events.enumerated() where seen.insert(event.eventId).inserted {
            columns[event.lane, default: LaneColumns()].add(event, ord: Int32(ord))
        }
        let lanes = columns.keys.sorted()
        var binds = PostgresBindings()
        for lane in lanes { columns[lane]!.bind(into: &binds) }
        let query = PostgresQuery(unsafeSQL: Self.insertSQL(lanes: lanes), binds: binds)
        let logger = logger
        let accepted = try await connection { conn in
            var rows = [(Int, Int64)]()
            for try await (ord, seq) in try await conn.query(query, logger: logger).decode((Int32, Int64).self) {
                rows.append((Int(ord), seq))
            }
            return rows
        }
        var seqs = [Int64?](repeating: nil, count: events.count)
        for (ord, seq) in accepted { seqs[ord] = seq }
        return AppendResult(ingestSeqs: seqs)
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

    /// The statement for a batch holding `lanes` (in rank order), whose arrays are bound lane by
    /// lane in the order of ``LaneColumns/bind(into:)``.
    static func insertSQL(lanes: [Lane]) -> String {
        var inputs = [String]()
        var candidates = [String]()
        var inserts = [String]()
        var n = 0
        func next(_ type: String) -> String {
            n += 1
            return "$\(n)::\(type)[]"
        }
        for lane in lanes {
            let t = LaneSQL(lane)
            let ownTypes = lane.fieldNames.map { name in name == "sequence" ? "int8" : name == "bytes" ? "bytea" : "text" }
            let arrays = ["int4", "text", "timestamptz", "timestamptz", "bytea"].map(next) + ownTypes.map(next)
            let names = (["ord"] + t.columns).map { "\"\($0)\"" }.joined(separator: ", ")
            inputs.append("in\(lane.rank) AS (SELECT * FROM unnest(\(arrays.joined(separator: ", "))) AS t(\(names)))")
            candidates.append(#"SELECT "ord", \#(lane.rank)::int2 AS "lane", "scopeId", "sourceTruthTime", "canonicalTruthTime", "eventId" FROM in\#(lane.rank)"#)
            let columns = (["ingestSeq"] + t.columns).map { "\"\($0)\"" }.joined(separator: ", ")
            let values = (["a.\"seq\""] + t.columns.map { "i.\"\($0)\"" }).joined(separator: ", ")
            inserts.append(#"l\#(lane.rank) AS (INSERT INTO "\#(t.table)" (\#(columns)) SELECT \#(values) FROM acc a JOIN in\#(lane.rank) i ON i."ord" = a."ord" WHERE a."lane" = \#(lane.rank))"#)
        }
        let laneNames = "ARRAY[" + Lane.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", ") + "]"
        return """
            WITH \(inputs.joined(separator: ",\n"))
            , base AS (SELECT "value" FROM "novaCounter" WHERE "name" = 'ingestSeq' FOR UPDATE)
            , candidates AS (SELECT u.*, b."value" AS "base" FROM (\(candidates.joined(separator: " UNION ALL "))) u CROSS JOIN base b)
            , ins AS (
                INSERT INTO "eventIndex" ("sourceTruthTime", "eventId", "lane")
                SELECT "sourceTruthTime", "eventId", "lane" FROM candidates ON CONFLICT DO NOTHING RETURNING "eventId")
            , acc AS (
                SELECT c.*, c."base" + row_number() OVER (ORDER BY c."ord") AS "seq"
                FROM candidates c JOIN ins ON ins."eventId" = c."eventId")
            , \(inserts.joined(separator: "\n, "))
            , counter AS (UPDATE "novaCounter" SET "value" = (SELECT "value" FROM base) + (SELECT count(*) FROM acc) WHERE "name" = 'ingestSeq')
            , stats AS (
                INSERT INTO "laneStats"
                SELECT "scopeId", (\(laneNames))["lane" + 1], count(*), min("canonicalTruthTime"), max("canonicalTruthTime"),
                       min("sourceTruthTime"), max("sourceTruthTime")
                FROM acc GROUP BY "scopeId", "lane"
                ON CONFLICT ("scopeId", "lane") DO UPDATE SET
                    "count" = "laneStats"."count" + excluded."count",
                    "firstCanonicalTruthTime" = LEAST("laneStats"."firstCanonicalTruthTime", excluded."firstCanonicalTruthTime"),
                    "lastCanonicalTruthTime" = GREATEST("laneStats"."lastCanonicalTruthTime", excluded."lastCanonicalTruthTime"),
                    "firstSourceTruthTime" = LEAST("laneStats"."firstSourceTruthTime", excluded."firstSourceTruthTime"),
                    "lastSourceTruthTime" = GREATEST("laneStats"."lastSourceTruthTime", excluded."lastSourceTruthTime"))
            , notified AS MATERIALIZED (SELECT pg_notify('\(commitChannel)', '') FROM acc LIMIT 1)
            SELECT "ord", "seq" FROM acc WHERE (SELECT count(*) FROM notified) >= 0
            """
    }
}

/// One lane's events of a batch as column arrays, bound as binary PostgreSQL arrays.
struct LaneColumns {
    var ord = BinaryArray<Int4Elements>()
    var scopeId = BinaryArray<TextElements>()
    var source = BinaryArray<TimestamptzElements>()
    var canonical = BinaryArray<TimestamptzElements>()
    var eventId = BinaryArray<ByteaElements>()
    /// The lane's own text fields in `Lane.fieldNames` order (raw: only `connectionId`).
    var texts = [BinaryArray<TextElements>](repeating: .init(), count: 3)
    var sequence = BinaryArray<Int8Elements>()
    var bytes = BinaryArray<ByteaElements>()
    var payload = BinaryArray<TextElements>()
    var lane: Lane?

    mutating func add(_ event: Event, ord: Int32) {
        lane = event.lane
        self.ord.append(ord)
        scopeId.append(event.scopeId)
        source.append(event.sourceTruthTime)
        canonical.append(event.canonicalTruthTime)
        event.eventId.withUnsafeBytes { eventId.append(raw: $0) }
        switch event.fields {
        case .raw(let connectionId, let seq, let frame):
            texts[0].append(connectionId)
            sequence.append(seq)
            frame.withUnsafeBytes { bytes.append(raw: $0) }
        case .parsed(let a, let b, let c, let p), .command(let a, let b, let c, let p):
            texts[0].append(a)
            texts[1].append(b)
            texts[2].append(c)
            p.utf8.withUnsafeBytes { payload.append(raw: $0) }
        case .ui(let a, let p), .metadata(let a, let p):
            texts[0].append(a)
            p.utf8.withUnsafeBytes { payload.append(raw: $0) }
        }
    }

    func bind(into binds: inout PostgresBindings) {
        binds.append(ord)
        binds.append(scopeId)
        binds.append(source)
        binds.append(canonical)
        binds.append(eventId)
        switch lane {
        case .raw:
            binds.append(texts[0])
            binds.append(sequence)
            binds.append(bytes)
        case .parsed, .command:
            binds.append(texts[0])
            binds.append(texts[1])
            binds.append(texts[2])
            binds.append(payload)
        case .ui, .metadata, nil:
            binds.append(texts[0])
            binds.append(payload)
        }
    }
}
