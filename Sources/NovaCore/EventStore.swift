/// What every backend (SQLite at the edge, PostgreSQL at the hub) provides. Callers (ingest,
/// query, streaming, sync) see only this; the conformance suite runs the same tests on each.
public protocol EventStore: Sendable {
    /// Appends a batch in one transaction, deduplicating globally by `eventId`. Returns only after
    /// the accepted events are durably committed.
    func append(_ events: [Event]) async throws(StoreError) -> AppendResult

    /// One lane's events in contract order, at most `read.limit` of them, and whether they
    /// stopped at `read.maxBytes`.
    func read(_ read: LaneRead) async throws(StoreError) -> LaneReadResult

    /// One lane's events with `ingestSeq` in `seqs`, in commit order (every scope), stopping once
    /// their content reaches `maxBytes` when given. Streams, the feed and the shipper use it
    /// through ``EventStore/committed(after:limit:maxBytes:)``.
    func readCommitted(_ lane: Lane, seqs: ClosedRange<Int64>, maxBytes: Int?) async throws(StoreError) -> [CommittedEvent]

    /// The smallest `ingestSeq` after `after` in one lane, if any.
    func nextCommittedSeq(_ lane: Lane, after: Int64) async throws(StoreError) -> Int64?

    /// The `ingestSeq` of the last committed event (0 for an empty store).
    func lastCommittedSeq() async throws(StoreError) -> Int64

    /// Calls `onCommit` whenever any process may have committed events to this store, with the
    /// `ingestSeq` committed when it is known, until cancelled. A store only one process writes
    /// (SQLite) returns at once.
    func watchCommits(_ onCommit: @escaping @Sendable (_ committed: Int64?) -> Void) async throws

    /// Per lane and time bucket of one scope: the event count and the XOR of the eventIds
    /// (sync.md), for `nova verify`. Sorted by lane, then bucket; empty buckets are absent.
    func digests(_ request: DigestRequest) async throws(StoreError) -> [BucketDigest]

    // MARK: Sync, edge side: this store's outbox.

    /// The store's identity, its last `ingestSeq`, and the acknowledgement it last recorded.
    func outboxState() async throws(StoreError) -> OutboxState

    /// Records that the hub acknowledged everything through `seq` (never moves backwards).
    func recordAcknowledged(_ seq: Int64) async throws(StoreError)

    /// Gives the store a new `storeId` and forgets its acknowledgements: its outbox is shipped
    /// again from the start under the new identity (the hub dedupes). For a store whose history
    /// no longer matches what the hub acknowledged under the old id (restored from a backup).
    func renewStoreId() async throws(StoreError) -> String

    /// Per scope, the smallest `canonicalTruthTime` among the events after `seq` (no entry for a
    /// scope without any). Reads every such event: callers ask only about short tails.
    func oldestCanonicalTimes(after seq: Int64) async throws(StoreError) -> [String: Timestamp]

    /// Per lane, how many stored events come after `seq` in commit order (a count over the
    /// tail's range of `ingestSeq`; `nova migrate` reads it once, for its progress per lane).
    func committedCounts(after seq: Int64) async throws(StoreError) -> [Lane: Int64]

    // MARK: Sync, hub side.

    /// Applies a sync batch in one transaction: the events with dedupe and, for an outbox batch,
    /// the site's watermark (sync.md, protocol step 2). Committed before it returns.
    /// `turn` returns when the caller's ordering lets this batch take the site's watermark (its
    /// predecessor applied); a store may do the batch's work that does not depend on the
    /// watermark before that, so that consecutive batches of one site overlap.
    func applySync(_ batch: SyncBatch, turn: @escaping @Sendable () async -> Void) async throws(StoreError) -> SyncApplyResult

    /// The watermark of (siteId, storeId); `ackedSeq` 0 for one never seen.
    func syncWatermark(siteId: String, storeId: String) async throws(StoreError) -> SyncWatermark

    /// Every (siteId, storeId) that has shipped here, by site then last contact.
    func syncSites() async throws(StoreError) -> [SyncSite]

    /// Forgets a site's watermarks (every store it shipped from), not its events: for a site
    /// retired for good, whose last `completeThrough` would otherwise hold back every answer's
    /// completeness forever. A site still shipping comes back by itself: its next batch gets a
    /// gap at 0, and it re-sends what it still holds (deduped). Returns how many stores were
    /// forgotten.
    func forgetSyncSite(_ siteId: String) async throws(StoreError) -> Int

    /// Count and time span per scope and lane, and the store's size.
    func stats() async throws(StoreError) -> StoreStats

    /// Whether the store is reachable and its schema current (for `/readyz`).
    func checkReady() async throws(StoreError)

    /// What the store is: backend, schema version, identity.
    var description: String { get }

    /// Releases connections and files; the store is unusable afterwards.
    func close() async
}

/// An event with its position in commit order.
public struct CommittedEvent: Sendable {
    public var seq: Int64
    public var event: Event

    public init(seq: Int64, event: Event) {
        self.seq = seq
        self.event = event
    }
}

extension EventStore {
    public func watchCommits(_ onCommit: @escaping @Sendable (_ committed: Int64?) -> Void) async throws {}

    /// Applies a batch whose turn has come.
    public func applySync(_ batch: SyncBatch) async throws(StoreError) -> SyncApplyResult {
        try await applySync(batch, turn: {})
    }

    /// Events of every lane committed after `after`, in commit order, at most `limit`: the
    /// window (`after`, `after + limit`] of `ingestSeq`, read lane by lane. `ingestSeq` is unique
    /// across lanes, so the window holds at most `limit` events.
    ///
    /// The lane reads are separate statements, so a commit can land between them. The head is
    /// therefore read first and the window cut there: `ingestSeq` is given in commit order under
    /// the writer's lock, so everything up to a committed head is visible to the reads after it.
    /// A window that retention emptied is stepped over to the next event still stored.
    ///
    /// With `maxBytes`, the answer ends once its events' content reaches it (at least one event):
    /// each lane's read stops there, and the answer is cut at the first place a lane stopped, so
    /// it still has no gap.
    public func committed(after: Int64, limit: Int, maxBytes: Int? = nil) async throws(StoreError) -> [CommittedEvent] {
        let head = try await lastCommittedSeq()
        var start = after
        while start < head {
            let end = Swift.min(head, start + Int64(Swift.max(1, limit)))
            var all = [CommittedEvent]()
            var cutAt = end
            for lane in Lane.allCases {
                let rows = try await readCommitted(lane, seqs: (start + 1)...end, maxBytes: maxBytes)
                if let maxBytes, let last = rows.last, rows.countReaching(maxBytes, bytes: { $0.event.preimageLength }) != nil {
                    cutAt = Swift.min(cutAt, last.seq)
                }
                all += rows
            }
            if !all.isEmpty {
                all.sort { $0.seq < $1.seq }
                if cutAt < end { all.removeAll { $0.seq > cutAt } }
                if let maxBytes, let reached = all.countReaching(maxBytes, bytes: { $0.event.preimageLength }) { all.removeLast(all.count - reached) }
                return all
            }
            var next: Int64?
            for lane in Lane.allCases {
                if let seq = try await nextCommittedSeq(lane, after: end) { next = Swift.min(next ?? seq, seq) }
            }
            guard let next, next <= head else { return [] }
            start = next - 1
        }
        return []
    }
}

/// The outcome of one append: one entry per event of the batch, in order.
public struct AppendResult: Sendable, Hashable {
    /// The `ingestSeq` given to each accepted event, nil for a duplicate.
    public var ingestSeqs: [Int64?]

    public init(ingestSeqs: [Int64?]) {
        self.ingestSeqs = ingestSeqs
    }

    public var accepted: Int { ingestSeqs.count { $0 != nil } }
    public var duplicates: Int { ingestSeqs.count { $0 == nil } }
}

public struct StoreStats: Sendable, Hashable, Codable {
    public struct LaneStats: Sendable, Hashable, Codable {
        public var scopeId: String
        public var lane: Lane
        public var count: Int64
        public var firstCanonicalTruthTime: Timestamp
        public var lastCanonicalTruthTime: Timestamp
        public var firstSourceTruthTime: Timestamp
        public var lastSourceTruthTime: Timestamp

        public init(
            scopeId: String, lane: Lane, count: Int64, firstCanonicalTruthTime: Timestamp, lastCanonicalTruthTime: Timestamp,
            firstSourceTruthTime: Timestamp, lastSourceTruthTime: Timestamp
        ) {
            self.scopeId = scopeId
            self.lane = lane
            self.count = count
            self.firstCanonicalTruthTime = firstCanonicalTruthTime
            self.lastCanonicalTruthTime = lastCanonicalTruthTime
            self.firstSourceTruthTime = firstSourceTruthTime
            self.lastSourceTruthTime = lastSourceTruthTime
        }
    }

    /// Sorted by scope (bytewise), then lane rank.
    public var lanes: [LaneStats]
    public var storeBytes: Int64
    public var totalEvents: Int64 { lanes.reduce(0) { $0 + $1.count } }

    public init(lanes: [LaneStats], storeBytes: Int64) {
        self.lanes = lanes
        self.storeBytes = storeBytes
    }
}

extension EventStore {
    /// The smallest `canonicalTruthTime` among the events after `seq`, nil when there are none.
    public func oldestCanonicalTime(after seq: Int64) async throws(StoreError) -> Timestamp? {
        try await oldestCanonicalTimes(after: seq).values.min()
    }
}
