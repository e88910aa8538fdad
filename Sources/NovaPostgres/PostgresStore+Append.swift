import Logging
import NIOCore
import NovaCore
import PostgresNIO
import Synchronization

extension PostgresStore {
    /// Appends a batch in one transaction of two statements, never a round trip per event and no
    /// staging table; the events travel as binary arrays (one per column, per lane). The first
    /// inserts the batch's `eventIndex` entries and answers which events were new; the second
    /// numbers those (`ingestSeq`, in batch order, gap-free), inserts them into their lane tables,
    /// advances the counter and adds their `laneStats`, summed here. When it accepted anything it
    /// notifies ``commitChannel`` with this process's instance and the last `ingestSeq` it gave,
    /// which PostgreSQL delivers at commit; at most once per ``CommitNotifications/window``, since
    /// every notification costs the server work under its notify lock (measured: notifying every
    /// batch cost an eighth of the ingest rate).
    ///
    /// `ingestSeq` is gap-free in commit order because the second statement takes the counter's
    /// row lock (`FOR UPDATE`) and the transaction holds it until it commits. It is taken only
    /// once the ids are in `eventIndex`, so concurrent batches insert their index entries side by
    /// side and queue only for the numbering and the lane rows (measured: with the lock taken
    /// first, four clients left a fifth of the machine idle). They insert their entries in key
    /// order, so two batches with common ids cannot deadlock: the later waits for the earlier's
    /// commit at the first common id, holding no entry the earlier needs, and a batch holding the
    /// counter inserts no more entries. Copies of one event inside a batch are folded first, so
    /// each id is inserted once. A sync batch runs the same two statements with its wait for its
    /// turn between them (``applySync(_:turn:)``).
    public func append(_ events: [Event]) async throws(StoreError) -> AppendResult {
        if events.isEmpty { return AppendResult(ingestSeqs: []) }
        return try await insertingIntoPartitions { mode in try await self.appendOnce(events, mode: mode) }
    }

    /// Runs an insert, once more if retention dropped a partition between the check that it
    /// exists and the insert (check violation 23514 in the partitioned mode): the catalog is
    /// reloaded, so the partition is created again.
    func insertingIntoPartitions<T>(_ insert: (PostgresSchema.Mode) async throws -> T) async throws(StoreError) -> T {
        let mode = try ensureReady()
        do {
            return try await insert(mode)
        } catch where sqlState(error) == "23514" && mode == .partitioned {
            do {
                try await partitions.load(self)
                return try await insert(mode)
            } catch {
                throw mapError(error)
            }
        } catch {
            throw mapError(error)
        }
    }

    private func appendOnce(_ events: [Event], mode: PostgresSchema.Mode) async throws -> AppendResult {
        if mode == .partitioned { try await ensurePartitions(for: events) }
        let logger = logger
        return try await connection { conn in
            try await conn.withTransaction(logger: logger) { conn in
                let new = try await self.insertIndexEntries(events, on: conn, logger: logger)
                return try await self.append(events, new: new, on: conn, logger: logger)
            }
        }
    }

    /// The second half of an append, whose `eventIndex` entries this transaction inserted
    /// (``insertIndexEntries(_:on:logger:)``), so that every event at `positions` is new: they are
    /// numbered in that order from the counter, and their `laneStats` are summed here. The
    /// statement only inserts rows, with no join, sort or aggregate over the batch. Measured
    /// against one statement that also deduped (joining the new entries back to the batch and
    /// numbering them with a window function), alternating binaries, sync catch-ups of 2,000,000
    /// events to PostgreSQL: 92,200 and 96,500 → 99,700 and 105,000 events/s.
    func append(_ events: [Event], new positions: [Int], on conn: PostgresConnection, logger: Logger) async throws -> AppendResult {
        var seqs = [Int64?](repeating: nil, count: events.count)
        if positions.isEmpty { return AppendResult(ingestSeqs: seqs) }
        var columns = [Lane: LaneColumns]()
        var stats = LaneStatsColumns()
        for (rank, ord) in positions.enumerated() {
            columns[events[ord].lane, default: LaneColumns()].add(events[ord], ord: Int32(rank))
            stats.add(events[ord])
        }
        let lanes = columns.keys.sorted()
        var binds = PostgresBindings()
        for lane in lanes { columns[lane]!.bind(into: &binds) }
        binds.append(Int64(positions.count))
        stats.bind(into: &binds)
        let notifyInline = notifications.mayNotifyNow()
        let sql = Self.insertSQL(lanes: lanes, notifyAs: notifyInline ? instance : nil)
        var first: Int64?
        for try await row in try await conn.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger) {
            first = try Array(row)[0].int64()
        }
        guard let first else { throw StoreError(.internalError, "the append statement returned no row") }
        for (rank, ord) in positions.enumerated() { seqs[ord] = first + Int64(rank) }
        let last = first + Int64(positions.count) - 1
        if !notifyInline, notifications.owe(last) {
            Task { await self.sendOwedNotification() }
        }
        return AppendResult(ingestSeqs: seqs)
    }

    /// Inserts the `eventIndex` entries of `events` (copies of one id folded, in key order) and
    /// returns the positions of the events that were new: the first half of an append, which a
    /// sync batch runs before it waits for its turn. The entries are sorted here, so PostgreSQL's
    /// sort finds them in order.
    ///
    /// The insert answers only how many it inserted (its command tag). When that is fewer than
    /// the entries, a second statement asks which of them this transaction inserted (`xmin`, the
    /// inserting transaction, is ours; the others were there already or came from a transaction
    /// that committed first). Measured in psql, 300,000 entries in batches of 5,000: 2,450-2,510 ms
    /// with every inserted id returned through a CTE, as before, 2,120-2,180 ms without.
    /// This relies on `eventIndex` never being compressed: TimescaleDB, decompressing rows to
    /// check a conflict, would give rows this transaction did not insert its `xmin`.
    func insertIndexEntries(_ events: [Event], on conn: PostgresConnection, logger: Logger) async throws -> [Int] {
        var seen = Set<EventID>()
        var unique = [Int]()
        unique.reserveCapacity(events.count)
        for (i, event) in events.enumerated() where seen.insert(event.eventId).inserted { unique.append(i) }
        let sorted = unique.sorted { a, b in
            let (x, y) = (events[a], events[b])
            return x.sourceTruthTime != y.sourceTruthTime ? x.sourceTruthTime < y.sourceTruthTime : x.eventId < y.eventId
        }
        var lane = BinaryArray<Int4Elements>()
        var source = BinaryArray<TimestamptzElements>()
        var eventId = BinaryArray<ByteaElements>()
        for i in sorted {
            lane.append(Int32(events[i].lane.rank))
            source.append(events[i].sourceTruthTime)
            events[i].eventId.withUnsafeBytes { eventId.append(raw: $0) }
        }
        var binds = PostgresBindings()
        binds.append(lane)
        binds.append(source)
        binds.append(eventId)
        let sql = """
            INSERT INTO "eventIndex" ("sourceTruthTime", "eventId", "lane")
            SELECT "sourceTruthTime", "eventId", "lane"::int2
            FROM \(Self.rows(of: ["$1::int4[]", "$2::timestamptz[]", "$3::bytea[]"], as: ["lane", "sourceTruthTime", "eventId"]))
            ORDER BY "sourceTruthTime", "eventId"
            ON CONFLICT DO NOTHING
            """
        // The future-returning query: the only one of postgres-nio that hands out the command tag.
        let insert: EventLoopFuture<PostgresQueryResult> = conn.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger)
        let inserted = try await insert.get().metadata.rows
        guard let inserted else { throw StoreError(.internalError, "the eventIndex insert answered no row count") }
        if inserted == unique.count { return unique }
        if inserted == 0 { return [] }
        var ours = PostgresBindings()
        ours.append(source)
        ours.append(eventId)
        let which = """
            SELECT "eventId" FROM "eventIndex"
            WHERE ("sourceTruthTime", "eventId") IN (SELECT unnest($1::timestamptz[]), unnest($2::bytea[]))
            AND xmin = pg_current_xact_id()::xid
            """
        var new = Set<EventID>()
        for try await row in try await conn.query(PostgresQuery(unsafeSQL: which, binds: ours), logger: logger) {
            for cell in row { new.insert(try cell.eventId()) }
        }
        guard new.count == inserted else {
            throw StoreError(.internalError, "eventIndex: \(inserted) entries inserted, but \(new.count) found as this transaction's")
        }
        return unique.filter { new.contains(events[$0].eventId) }
    }

    /// The notification that appends inside a throttle window skipped, sent once the window ends
    /// (so the last commit of a burst is never left unannounced).
    private func sendOwedNotification() async {
        try? await Task.sleep(for: CommitNotifications.window)
        guard let seq = notifications.takeOwed() else { return }
        let logger = logger
        let query: PostgresQuery = "SELECT pg_notify(\(Self.commitChannel), \(instance + ":" + String(seq)))"
        _ = try? await connection { conn in try await conn.query(query, logger: logger).collect() }
    }

    func ensurePartitions(for events: [Event]) async throws {
        var byTable = [String: Set<Int64>]()
        for event in events {
            byTable["eventIndex", default: []].insert(PartitionCatalog.day(of: event.sourceTruthTime))
            byTable[LaneSQL(event.lane).table, default: []].insert(PartitionCatalog.day(of: event.canonicalTruthTime))
        }
        for (table, days) in byTable {
            try await partitions.ensure(table, days: days, store: self)
        }
    }

    /// The statement of ``append(_:new:on:logger:)`` for a batch holding `lanes` (in rank order):
    /// each lane's arrays in the order of ``LaneColumns/bind(into:)`` (their `ord` the event's
    /// rank among the new ones), then the number of events, then the `laneStats` sums
    /// (``LaneStatsColumns``). It answers the first `ingestSeq` it gave.
    /// `notifyAs`: the instance to announce the commit for, or nil to stay silent.
    static func insertSQL(lanes: [Lane], notifyAs instance: String?) -> String {
        var n = 0
        func parameter(_ type: String) -> String {
            n += 1
            return "$\(n)::\(type)"
        }
        func quoted(_ names: [String]) -> String { names.map { "\"\($0)\"" }.joined(separator: ", ") }
        var inserts = [String]()
        for lane in lanes {
            let t = LaneSQL(lane)
            let ownTypes = lane.fieldNames.map { name in name == "sequence" ? "int8" : name == "bytes" ? "bytea" : "text" }
            let arrays = (["int4", "text", "timestamptz", "timestamptz", "bytea"] + ownTypes).map { parameter($0 + "[]") }
            let values = (["b.\"value\" + 1 + t.\"ord\""] + t.columns.map { "t.\"\($0)\"" }).joined(separator: ", ")
            inserts.append("""
                l\(lane.rank) AS (INSERT INTO "\(t.table)" (\(quoted(["ingestSeq"] + t.columns))) SELECT \(values)
                    FROM base b CROSS JOIN \(rows(of: arrays, as: ["ord"] + t.columns)))
                """)
        }
        let count = parameter("int8")
        let stats = ["text", "text", "int8", "timestamptz", "timestamptz", "timestamptz", "timestamptz"].map { parameter($0 + "[]") }
        return """
            WITH base AS (SELECT "value" FROM "novaCounter" WHERE "name" = 'ingestSeq' FOR UPDATE)
            , \(inserts.joined(separator: "\n, "))
            , counter AS (UPDATE "novaCounter" SET "value" = (SELECT "value" FROM base) + \(count) WHERE "name" = 'ingestSeq')
            , stats AS (INSERT INTO "laneStats" SELECT * FROM unnest(\(stats.joined(separator: ", "))) \(statsConflict))
            \(instance.map { instance in """
                , notified AS MATERIALIZED (SELECT pg_notify('\(commitChannel)', '\(instance):' || ((SELECT "value" FROM base) + \(count))::text))
                SELECT "value" + 1 FROM base WHERE (SELECT count(*) FROM notified) >= 0
                """ } ?? #"SELECT "value" + 1 FROM base"#)
            """
    }

    /// The rows of parallel arrays (of one length), as `t`: `unnest` in a select list, which
    /// PostgreSQL streams (ProjectSet), not `unnest(a, b, …)` in `FROM`, which it first copies
    /// whole into a tuple store. Measured on 300,000 raw frames in batches of 5,000 into a table
    /// with the lane's indexes: 3,180-3,280 ms → 2,530-2,590 ms; into `eventIndex`: 1,800-1,920
    /// → 1,680-1,810 ms.
    static func rows(of arrays: [String], as names: [String]) -> String {
        "(SELECT \(zip(arrays, names).map { "unnest(\($0)) AS \"\($1)\"" }.joined(separator: ", "))) AS t"
    }

    private static let statsConflict = """
        ON CONFLICT ("scopeId", "lane") DO UPDATE SET
            "count" = "laneStats"."count" + excluded."count",
            "firstCanonicalTruthTime" = LEAST("laneStats"."firstCanonicalTruthTime", excluded."firstCanonicalTruthTime"),
            "lastCanonicalTruthTime" = GREATEST("laneStats"."lastCanonicalTruthTime", excluded."lastCanonicalTruthTime"),
            "firstSourceTruthTime" = LEAST("laneStats"."firstSourceTruthTime", excluded."firstSourceTruthTime"),
            "lastSourceTruthTime" = GREATEST("laneStats"."lastSourceTruthTime", excluded."lastSourceTruthTime")
        """
}

/// The `laneStats` of a batch's new events, summed per (scope, lane) before they are sent.
struct LaneStatsColumns {
    private struct Key: Hashable {
        var scopeId: String
        var lane: Lane
    }

    private struct Sums {
        var count: Int64 = 0
        var canonical: ClosedRange<Timestamp>
        var source: ClosedRange<Timestamp>

        mutating func fold(_ c: Timestamp, _ s: Timestamp) {
            count += 1
            canonical = Swift.min(canonical.lowerBound, c)...Swift.max(canonical.upperBound, c)
            source = Swift.min(source.lowerBound, s)...Swift.max(source.upperBound, s)
        }
    }

    private var sums = [Key: Sums]()

    mutating func add(_ event: Event) {
        let (c, s) = (event.canonicalTruthTime, event.sourceTruthTime)
        sums[Key(scopeId: event.scopeId, lane: event.lane), default: Sums(canonical: c...c, source: s...s)].fold(c, s)
    }

    func bind(into binds: inout PostgresBindings) {
        var scope = BinaryArray<TextElements>(), lane = BinaryArray<TextElements>(), count = BinaryArray<Int8Elements>()
        var times = [BinaryArray<TimestamptzElements>](repeating: .init(), count: 4)
        for (key, sum) in sums {
            scope.append(key.scopeId)
            lane.append(key.lane.rawValue)
            count.append(sum.count)
            for (k, t) in [sum.canonical.lowerBound, sum.canonical.upperBound, sum.source.lowerBound, sum.source.upperBound].enumerated() { times[k].append(t) }
        }
        binds.append(scope)
        binds.append(lane)
        binds.append(count)
        for t in times { binds.append(t) }
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

/// Rate-limits commit notifications: an append notifies inline at most once per window; one
/// inside the window leaves a notification owed, sent when the window ends.
final class CommitNotifications: Sendable {
    static let window = Duration.milliseconds(50)

    private struct State {
        var last = ContinuousClock.now - .seconds(1)
        var owed: Int64?
    }

    private let state = Mutex(State())

    /// Whether this append should notify (and so starts a new window).
    func mayNotifyNow() -> Bool {
        state.withLock { s in
            let now = ContinuousClock.now
            guard now - s.last >= Self.window else { return false }
            s.last = now
            s.owed = nil
            return true
        }
    }

    /// Records a commit that was not announced; true when no notification was owed yet (the
    /// caller then schedules one).
    func owe(_ seq: Int64) -> Bool {
        state.withLock { s in
            defer { s.owed = max(s.owed ?? seq, seq) }
            return s.owed == nil
        }
    }

    /// The owed notification's `ingestSeq`, if one is still owed; starts a new window.
    func takeOwed() -> Int64? {
        state.withLock { s in
            defer { s.owed = nil }
            if s.owed != nil { s.last = .now }
            return s.owed
        }
    }
}
