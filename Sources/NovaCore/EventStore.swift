/// What every backend (SQLite at the edge, PostgreSQL at the hub) provides. Callers (ingest,
/// query, streaming, sync) see only this; the conformance suite runs the same tests on each.
public protocol EventStore: Sendable {
    /// Appends a batch in one transaction, deduplicating globally by `eventId`. Returns only after
    /// the accepted events are durably committed.
    func append(_ events: [Event]) async throws(StoreError) -> AppendResult

    /// One lane's events in contract order, at most `read.limit` of them.
    func read(_ read: LaneRead) async throws(StoreError) -> [Event]

    /// One lane's events committed after `ingestSeq` `after`, in commit order, at most `limit`
    /// (every scope). Streams and the feed use it through ``EventStore/committed(after:limit:)``.
    func readCommitted(_ lane: Lane, after: Int64, limit: Int) async throws(StoreError) -> [CommittedEvent]

    /// The `ingestSeq` of the last committed event (0 for an empty store).
    func lastCommittedSeq() async throws(StoreError) -> Int64

    /// Calls `onCommit` whenever another process may have committed events to this store, until
    /// cancelled. A store only one process writes (SQLite) returns at once.
    func watchCommits(_ onCommit: @escaping @Sendable () -> Void) async throws

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
    public func watchCommits(_ onCommit: @escaping @Sendable () -> Void) async throws {}

    /// Events of every lane committed after `after`, in commit order, at most `limit`: each lane
    /// is read from its `ingestSeq` index, and only the prefix that every lane has fully covered
    /// is returned, so nothing in between is skipped.
    ///
    /// The lane reads are separate statements, so a commit can land between them. The head is
    /// therefore read first and the answer cut there: `ingestSeq` is given in commit order under
    /// the writer's lock, so everything up to a committed head is visible to the reads after it.
    public func committed(after: Int64, limit: Int) async throws(StoreError) -> [CommittedEvent] {
        let head = try await lastCommittedSeq()
        if head <= after { return [] }
        var all = [CommittedEvent]()
        var bound = head
        for lane in Lane.allCases {
            let rows = try await readCommitted(lane, after: after, limit: limit)
            if rows.count == limit, let last = rows.last { bound = Swift.min(bound, last.seq) }
            all += rows
        }
        all.removeAll { $0.seq > bound }
        all.sort { $0.seq < $1.seq }
        return all
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
