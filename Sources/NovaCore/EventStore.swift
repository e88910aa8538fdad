/// What every backend (SQLite at the edge, PostgreSQL at the hub) provides. Callers (ingest,
/// query, streaming, sync) see only this; the conformance suite runs the same tests on each.
public protocol EventStore: Sendable {
    /// Appends a batch in one transaction, deduplicating globally by `eventId`. Returns only after
    /// the accepted events are durably committed.
    func append(_ events: [Event]) async throws(StoreError) -> AppendResult

    /// One lane's events in contract order, at most `read.limit` of them.
    func read(_ read: LaneRead) async throws(StoreError) -> [Event]

    /// Count and time span per scope and lane, and the store's size.
    func stats() async throws(StoreError) -> StoreStats

    /// Whether the store is reachable and its schema current (for `/readyz`).
    func checkReady() async throws(StoreError)

    /// What the store is: backend, schema version, identity.
    var description: String { get }

    /// Releases connections and files; the store is unusable afterwards.
    func close() async
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
