import Foundation
import GRDB
import Logging
import NovaCore
import Synchronization

extension SQLiteStore {
    public func digests(_ request: DigestRequest) async throws(StoreError) -> [BucketDigest] {
        do {
            return try await pool.read { db in
                var rows = [(lane: Lane, bucket: Int64, id: EventID)]()
                for lane in request.lanes {
                    // Reads only the ordering index of the timebase (it holds the time and the id).
                    let time = LaneSQL.timeColumn(request.timebase)
                    let cursor = try Row.fetchCursor(
                        db, sql: "SELECT \(time), eventId FROM \(LaneSQL(lane).table) WHERE scopeId = ? AND \(time) >= ? AND \(time) < ?",
                        arguments: [request.scopeId, request.range.lowerBound.microseconds, request.range.upperBound.microseconds])
                    while let row = try cursor.next() {
                        let id: Data = row[1]
                        rows.append((lane, request.bucketStart(row[0]), EventID(bytes: id) ?? .zero))
                    }
                }
                return .folding(rows)
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func outboxState() async throws(StoreError) -> OutboxState {
        do {
            let (last, acked) = try await pool.read { db in
                let values = try Row.fetchAll(db, sql: "SELECT key, value FROM novaStore WHERE key IN ('lastIngestSeq', 'syncAckedSeq')")
                var map = [String: Int64]()
                for row in values { map[row[0]] = row[1] }
                return (map["lastIngestSeq"] ?? 0, map["syncAckedSeq"] ?? 0)
            }
            return OutboxState(storeId: storeId, lastSeq: last, ackedSeq: acked)
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func recordAcknowledged(_ seq: Int64) async throws(StoreError) {
        do {
            try await pool.write { db in
                try db.execute(sql: "UPDATE novaStore SET value = max(value, ?) WHERE key = 'syncAckedSeq'", arguments: [seq])
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func renewStoreId() async throws(StoreError) -> String {
        let fresh = UUID().uuidString.lowercased()
        do {
            try await pool.write { db in
                try db.execute(sql: "UPDATE novaStore SET value = ? WHERE key = 'storeId'", arguments: [fresh])
                try db.execute(sql: "UPDATE novaStore SET value = 0 WHERE key = 'syncAckedSeq'")
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
        identity.withLock { $0 = fresh }
        logger.warning("store identity renewed; the outbox ships again from its start", metadata: ["storeId": "\(fresh)"])
        return fresh
    }

    public func oldestCanonicalTimes(after seq: Int64) async throws(StoreError) -> [String: Timestamp] {
        do {
            return try await pool.read { db in
                var oldest = [String: Int64]()
                for lane in Lane.allCases {
                    // `ingestSeq` is the rowid: a range scan of the tail.
                    let rows = try Row.fetchAll(
                        db, sql: "SELECT scopeId, min(canonicalTruthTime) FROM \(LaneSQL(lane).table) WHERE ingestSeq > ? GROUP BY scopeId", arguments: [seq])
                    for row in rows {
                        let (scope, t): (String, Int64) = (row[0], row[1])
                        oldest[scope] = min(oldest[scope] ?? t, t)
                    }
                }
                return oldest.mapValues(Timestamp.init(microseconds:))
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func committedCounts(after seq: Int64) async throws(StoreError) -> [Lane: Int64] {
        do {
            return try await pool.read { db in
                var counts = [Lane: Int64]()
                for lane in Lane.allCases {
                    counts[lane] = try Int64.fetchOne(db, sql: "SELECT count(*) FROM \(LaneSQL(lane).table) WHERE ingestSeq > ?", arguments: [seq]) ?? 0
                }
                return counts
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    /// The batch's per-scope completeness replaces the site's previous one; a batch with a
    /// `pendingFrom` but none (an older edge) leaves the site-wide value to stand for each scope.
    static func recordScopes(_ batch: SyncBatch, db: Database) throws {
        guard batch.pendingFrom != nil else { return }
        let key: StatementArguments = [batch.siteId, batch.storeId]
        try db.execute(sql: "UPDATE syncSites SET otherScopesFrom = ? WHERE siteId = ? AND storeId = ?", arguments: [batch.otherScopesPendingFrom?.microseconds] + key)
        try db.execute(sql: "DELETE FROM syncSiteScopes WHERE siteId = ? AND storeId = ?", arguments: key)
        for (scope, time) in batch.scopePendingFrom ?? [:] {
            try db.execute(sql: "INSERT INTO syncSiteScopes VALUES (?, ?, ?, ?)", arguments: key + [scope, time.microseconds])
        }
    }

    /// One writer: the batch waits for its turn, then runs whole in one write transaction.
    public func applySync(_ batch: SyncBatch, turn: @escaping @Sendable () async -> Void) async throws(StoreError) -> SyncApplyResult {
        await turn()
        do {
            return try await pool.write { db in
                let now = Timestamp.now().microseconds
                let key: StatementArguments = [batch.siteId, batch.storeId]
                if batch.kind != .repair {
                    try db.execute(sql: "INSERT INTO syncSites VALUES (?, ?, 0, NULL, NULL, 0, ?, 0, 0, NULL) ON CONFLICT DO NOTHING", arguments: key + [now])
                }
                let row = try Row.fetchOne(db, sql: "SELECT ackedSeq, lastEventId FROM syncSites WHERE siteId = ? AND storeId = ?", arguments: key)
                let before = SyncWatermark(ackedSeq: row?[0] ?? 0, lastEventId: (row?[1] as Data?).flatMap { EventID(bytes: $0) })
                let report: StatementArguments = [batch.pendingFrom?.microseconds, batch.outboxSize, now]
                switch SyncApplyPlan(batch, ackedSeq: before.ackedSeq) {
                case .replay: return SyncApplyResult(.alreadyApplied(before))
                case .gap: return SyncApplyResult(.gap(before))
                case .touch:
                    try db.execute(
                        sql: """
                            UPDATE syncSites SET completeThrough = coalesce(?, completeThrough), pendingEvents = ?, lastContactAt = ?
                            WHERE siteId = ? AND storeId = ?
                            """, arguments: report + key)
                    try Self.recordScopes(batch, db: db)
                    return SyncApplyResult(.applied(before, accepted: 0, duplicates: 0))
                case .apply(let events):
                    let appended = events.map(\.event)
                    let result = try Self.append(appended, db: db)
                    guard batch.kind == .outbox, let last = events.last else {
                        try db.execute(sql: "UPDATE syncSites SET lastContactAt = ? WHERE siteId = ? AND storeId = ?", arguments: [now] + key)
                        return SyncApplyResult(.applied(before, accepted: result.accepted, duplicates: result.duplicates), appended: appended, ingestSeqs: result.ingestSeqs)
                    }
                    try db.execute(
                        sql: """
                            UPDATE syncSites SET ackedSeq = ?, lastEventId = ?, completeThrough = coalesce(?, completeThrough), pendingEvents = ?,
                                lastContactAt = ?, batchesApplied = batchesApplied + 1, eventsApplied = eventsApplied + ?
                            WHERE siteId = ? AND storeId = ?
                            """,
                        arguments: [batch.lastSeq, Data(last.event.eventId.bytes)] + report + [result.accepted] + key)
                    try Self.recordScopes(batch, db: db)
                    let after = SyncWatermark(ackedSeq: batch.lastSeq, lastEventId: last.event.eventId)
                    return SyncApplyResult(.applied(after, accepted: result.accepted, duplicates: result.duplicates), appended: appended, ingestSeqs: result.ingestSeqs)
                }
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func syncWatermark(siteId: String, storeId: String) async throws(StoreError) -> SyncWatermark {
        do {
            return try await pool.read { db in
                let row = try Row.fetchOne(db, sql: "SELECT ackedSeq, lastEventId FROM syncSites WHERE siteId = ? AND storeId = ?", arguments: [siteId, storeId])
                return SyncWatermark(ackedSeq: row?[0] ?? 0, lastEventId: (row?[1] as Data?).flatMap { EventID(bytes: $0) })
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func forgetSyncSite(_ siteId: String) async throws(StoreError) -> Int {
        do {
            return try await pool.write { db in
                try db.execute(sql: "DELETE FROM syncSiteScopes WHERE siteId = ?", arguments: [siteId])
                try db.execute(sql: "DELETE FROM syncSites WHERE siteId = ?", arguments: [siteId])
                return db.changesCount
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func syncSites() async throws(StoreError) -> [SyncSite] {
        do {
            return try await pool.read { db in
                var scopes = [[String]: [String: Timestamp]]()
                for row in try Row.fetchAll(db, sql: "SELECT siteId, storeId, scopeId, pendingFrom FROM syncSiteScopes") {
                    scopes[[row[0], row[1]], default: [:]][row[2]] = Timestamp(microseconds: row[3])
                }
                return try Row.fetchAll(db, sql: """
                    SELECT siteId, storeId, ackedSeq, completeThrough, pendingEvents, lastContactAt, batchesApplied, eventsApplied, otherScopesFrom
                    FROM syncSites ORDER BY siteId, lastContactAt DESC
                    """).map { row in
                    var site = SyncSite(
                        siteId: row[0], storeId: row[1], ackedSeq: row[2], completeThrough: (row[3] as Int64?).map(Timestamp.init(microseconds:)),
                        pendingEvents: row[4], lastContactAt: Timestamp(microseconds: row[5]), batchesApplied: row[6], eventsApplied: row[7])
                    site.otherScopesCompleteThrough = (row[8] as Int64?).map(Timestamp.init(microseconds:))
                    site.scopesCompleteThrough = scopes[[site.siteId, site.storeId]] ?? [:]
                    return site
                }
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }
}
