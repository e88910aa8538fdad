import GRDB
import GRDBSQLite
import NovaCore

extension SQLiteStore {
    /// Appends in one transaction. Each event is inserted with the next `ingestSeq` as its rowid;
    /// a duplicate (the unique source-order index, see ``SQLiteSchema``) inserts nothing and does not
    /// consume a number, so `ingestSeq` stays gap-free in commit order.
    public func append(_ events: [Event]) async throws(StoreError) -> AppendResult {
        if events.isEmpty { return AppendResult(ingestSeqs: []) }
        let maxBytes = maxBytes
        do {
            return try await pool.write { db in
                if maxBytes > 0 {
                    // Pages in use, not the file's size: pages that retention freed are reused.
                    let used = try Int64.fetchOne(db, sql: "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()") ?? 0
                    if used >= maxBytes {
                        throw StoreError(.full, "the disk budget is reached: \(used) bytes in use of \(maxBytes) (database.sqlite.maxBytes); ingest is refused and nothing stored is dropped. Sync to the hub and let retention free space, or raise the budget")
                    }
                }
                return try Self.append(events, db: db)
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    static func insertSQL(_ lane: Lane) -> String {
        let t = LaneSQL(lane)
        let columns = ["ingestSeq"] + t.columns
        return "INSERT INTO \(t.table) (\(columns.joined(separator: ", "))) VALUES (\(columns.map { _ in "?" }.joined(separator: ", "))) ON CONFLICT DO NOTHING"
    }

    static func append(_ events: [Event], db: Database) throws -> AppendResult {
        var seq = try Int64.fetchOne(db, sql: "SELECT value FROM novaStore WHERE key = 'lastIngestSeq'") ?? 0
        var statements = [RawStatement?](repeating: nil, count: Lane.allCases.count)
        var seqs = [Int64?]()
        seqs.reserveCapacity(events.count)
        var stats = [StatsKey: LaneAggregate]()
        // Batches mostly hold runs of one scope and lane: fold a run before hashing its key.
        var run: (key: StatsKey, aggregate: LaneAggregate)?
        for event in events {
            let rank = event.lane.rank
            let s: RawStatement
            if let cached = statements[rank] {
                s = cached
            } else {
                s = RawStatement(try db.cachedStatement(sql: insertSQL(event.lane)))
                statements[rank] = s
            }
            s.reset()
            s.bind(1, seq + 1)
            s.bind(2, event.scopeId)
            s.bind(3, event.sourceTruthTime.microseconds)
            s.bind(4, event.canonicalTruthTime.microseconds)
            s.bind(5, event.eventId)
            switch event.fields {
            case .raw(let connectionId, let sequence, let bytes):
                s.bind(6, connectionId)
                s.bind(7, sequence)
                s.bind(8, blob: bytes)
            case .parsed(let streamId, let streamType, let schemaVersion, let payload):
                s.bind(6, streamId)
                s.bind(7, streamType)
                s.bind(8, schemaVersion)
                s.bind(9, payload: payload)
            case .ui(let viewId, let payload):
                s.bind(6, viewId)
                s.bind(7, payload: payload)
            case .command(let targetId, let commandType, let requestedBy, let payload):
                s.bind(6, targetId)
                s.bind(7, commandType)
                s.bind(8, requestedBy)
                s.bind(9, payload: payload)
            case .metadata(let metadataType, let payload):
                s.bind(6, metadataType)
                s.bind(7, payload: payload)
            }
            _ = try s.step(db)
            if sqlite3_changes(db.sqliteConnection) == 1 {
                seq += 1
                seqs.append(seq)
                if let current = run, current.key.lane == event.lane, current.key.scopeId == event.scopeId {
                    run!.aggregate.add(event)
                } else {
                    if let current = run { stats[current.key, default: .empty].merge(current.aggregate) }
                    var aggregate = LaneAggregate(event)
                    aggregate.add(event)
                    run = (StatsKey(scopeId: event.scopeId, lane: event.lane), aggregate)
                }
            } else {
                seqs.append(nil)
            }
        }
        if let current = run { stats[current.key, default: .empty].merge(current.aggregate) }
        if !stats.isEmpty {
            try db.execute(sql: "UPDATE novaStore SET value = ? WHERE key = 'lastIngestSeq'", arguments: [seq])
            let upsert = try db.cachedStatement(sql: """
                INSERT INTO laneStats (scopeId, lane, count, firstCanonicalTruthTime, lastCanonicalTruthTime, firstSourceTruthTime, lastSourceTruthTime)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (scopeId, lane) DO UPDATE SET
                    count = count + excluded.count,
                    firstCanonicalTruthTime = min(firstCanonicalTruthTime, excluded.firstCanonicalTruthTime),
                    lastCanonicalTruthTime = max(lastCanonicalTruthTime, excluded.lastCanonicalTruthTime),
                    firstSourceTruthTime = min(firstSourceTruthTime, excluded.firstSourceTruthTime),
                    lastSourceTruthTime = max(lastSourceTruthTime, excluded.lastSourceTruthTime)
                """)
            for (key, a) in stats {
                try upsert.execute(arguments: [
                    key.scopeId, key.lane.rawValue, a.count, a.firstCanonical, a.lastCanonical, a.firstSource, a.lastSource,
                ])
            }
        }
        return AppendResult(ingestSeqs: seqs)
    }
}

private struct StatsKey: Hashable {
    var scopeId: String
    var lane: Lane
}

/// Per (scope, lane) totals of one batch, folded into `laneStats` with one upsert each.
private struct LaneAggregate {
    var count: Int64 = 0
    var firstCanonical: Int64
    var lastCanonical: Int64
    var firstSource: Int64
    var lastSource: Int64

    /// Nothing yet: merging into it takes the other aggregate whole.
    static let empty = LaneAggregate(count: 0, firstCanonical: 0, lastCanonical: 0, firstSource: 0, lastSource: 0)

    init(count: Int64, firstCanonical: Int64, lastCanonical: Int64, firstSource: Int64, lastSource: Int64) {
        (self.count, self.firstCanonical, self.lastCanonical, self.firstSource, self.lastSource) =
            (count, firstCanonical, lastCanonical, firstSource, lastSource)
    }

    init(_ event: Event) {
        firstCanonical = event.canonicalTruthTime.microseconds
        lastCanonical = firstCanonical
        firstSource = event.sourceTruthTime.microseconds
        lastSource = firstSource
    }

    /// Folds another aggregate of the same key in.
    mutating func merge(_ other: LaneAggregate) {
        if count == 0 {
            self = other
            return
        }
        count += other.count
        firstCanonical = min(firstCanonical, other.firstCanonical)
        lastCanonical = max(lastCanonical, other.lastCanonical)
        firstSource = min(firstSource, other.firstSource)
        lastSource = max(lastSource, other.lastSource)
    }

    mutating func add(_ event: Event) {
        count += 1
        firstCanonical = min(firstCanonical, event.canonicalTruthTime.microseconds)
        lastCanonical = max(lastCanonical, event.canonicalTruthTime.microseconds)
        firstSource = min(firstSource, event.sourceTruthTime.microseconds)
        lastSource = max(lastSource, event.sourceTruthTime.microseconds)
    }
}
