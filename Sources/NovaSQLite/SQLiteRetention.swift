import GRDB
import Logging
import NovaCore
import ServiceLifecycle

extension SQLiteStore {
    /// Deletes at most `limit` events whose canonical time is before `cutoff` and whose
    /// `ingestSeq` is at most `throughSeq` (the hub's acknowledgement: an unacknowledged event is
    /// never deleted), in one transaction; returns how many. `laneStats` counts follow; its first
    /// times are left as they were (a span that may start early, never one that misses events).
    public func trim(before cutoff: Timestamp, throughSeq: Int64, limit: Int = 10_000) async throws(StoreError) -> Int {
        do {
            return try await pool.write { db in
                var deleted = 0
                for lane in Lane.allCases where deleted < limit {
                    let table = LaneSQL(lane).table
                    let scopes = try String.fetchAll(db, sql: """
                        DELETE FROM \(table) WHERE ingestSeq IN (
                            SELECT ingestSeq FROM \(table) WHERE ingestSeq <= ? AND canonicalTruthTime < ? ORDER BY ingestSeq LIMIT ?)
                        RETURNING scopeId
                        """, arguments: [throughSeq, cutoff.microseconds, limit - deleted])
                    deleted += scopes.count
                    var counts = [String: Int]()
                    for scope in scopes { counts[scope, default: 0] += 1 }
                    for (scope, n) in counts {
                        try db.execute(sql: "UPDATE laneStats SET count = count - ? WHERE scopeId = ? AND lane = ?", arguments: [n, scope, lane.rawValue])
                    }
                }
                if deleted > 0 { try db.execute(sql: "DELETE FROM laneStats WHERE count <= 0") }
                return deleted
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }
}

/// Edge retention inside `nova record`: every `interval`, deletes events older than `keep` in
/// canonical time, in transactions of bounded size. With sync on, only what the hub has
/// acknowledged (the store's recorded `ackedSeq`) is eligible, so an edge cut off from its hub
/// keeps everything, and refuses ingest at its disk budget rather than drop anything (sync.md).
/// In dual mode, likewise only what the shadow store holds (`shadowHolds`: its watermark; a
/// shadow that cannot be asked stops the pass).
public struct SQLiteRetention: Service {
    let store: SQLiteStore
    let keep: Duration
    let onlyAcknowledged: Bool
    let shadowHolds: (@Sendable () async throws -> Int64)?
    let interval: Duration
    let logger: Logger

    public init(
        store: SQLiteStore, keep: Duration, onlyAcknowledged: Bool, shadowHolds: (@Sendable () async throws -> Int64)? = nil,
        interval: Duration = .seconds(60), logger: Logger
    ) {
        self.store = store
        self.keep = keep
        self.onlyAcknowledged = onlyAcknowledged
        self.shadowHolds = shadowHolds
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await sweep()
                try? await Task.sleep(for: interval)
            }
        }
    }

    /// One pass: deletes everything eligible now, in chunks.
    func sweep() async {
        let keepMicros = keep.components.seconds * 1_000_000
        let cutoff = Timestamp(microseconds: Timestamp.now().microseconds - keepMicros)
        do {
            var through = onlyAcknowledged ? try await store.outboxState().ackedSeq : Int64.max
            if let shadowHolds { through = min(through, try await shadowHolds()) }
            var total = 0
            while !Task.isCancelled {
                let n = try await store.trim(before: cutoff, throughSeq: through)
                total += n
                if n == 0 { break }
            }
            if total > 0 {
                logger.info("retention: deleted events", metadata: ["count": "\(total)", "before": "\(cutoff)", "throughSeq": "\(through)"])
            }
        } catch {
            logger.error("retention: failed; will retry", metadata: ["error": "\((error as? StoreError)?.message ?? "\(error)")"])
        }
    }
}
