import Foundation

/// The values of the sync protocol (sync.md) that stores keep and both ends exchange. The shipper
/// (NovaSync) and the hub's receiver (NovaServer) meet only here and in ``SyncBatchCodec``.

/// One batch from an edge to the hub: its outbox positions (`firstSeq`...`lastSeq` of the edge's
/// `ingestSeq`) and the events committed there, each with its position.
public struct SyncBatch: Sendable {
    public enum Kind: String, Sendable {
        /// The next part of the outbox: applied with dedupe, and the site's `ackedSeq` advances.
        case outbox
        /// Events re-sent by `nova sync repair`: applied with dedupe; watermarks untouched.
        case repair
        /// No events: the edge has nothing beyond `lastSeq` (its `ackedSeq`) and reports its
        /// `pendingFrom`, so an idle site's `completeThrough` keeps up with its clock.
        case heartbeat
    }

    public var kind: Kind
    public var siteId: String
    public var storeId: String
    /// For `outbox`: the positions this batch covers; every event in between that the edge still
    /// holds is in `events`. For `repair`: 0 and 0. For `heartbeat`: 0 and the edge's `ackedSeq`.
    public var firstSeq: Int64
    public var lastSeq: Int64
    /// The smallest canonical time of the events still unacknowledged after this batch (sync.md).
    public var pendingFrom: Timestamp?
    /// The same per scope, for the scopes with events still unacknowledged after this batch; sent
    /// with `pendingFrom` (nil when it is nil, or from an edge that does not send it).
    public var scopePendingFrom: [String: Timestamp]?
    /// What holds for every other scope: the edge has nothing of them pending before this (the
    /// oldest ingest request still committing, or its clock).
    public var otherScopesPendingFrom: Timestamp?
    /// How many events the edge's outbox held beyond this batch when it was sent.
    public var outboxSize: Int64
    public var events: [CommittedEvent]

    public init(
        kind: Kind = .outbox, siteId: String, storeId: String, firstSeq: Int64, lastSeq: Int64, pendingFrom: Timestamp?, outboxSize: Int64,
        events: [CommittedEvent]
    ) {
        self.kind = kind
        self.siteId = siteId
        self.storeId = storeId
        self.firstSeq = firstSeq
        self.lastSeq = lastSeq
        self.pendingFrom = pendingFrom
        self.outboxSize = outboxSize
        self.events = events
    }

    /// A batch carrying the site-wide and the per-scope `pendingFrom` (nil: not known).
    public init(
        kind: Kind = .outbox, siteId: String, storeId: String, firstSeq: Int64, lastSeq: Int64, pending: PendingFrom?, outboxSize: Int64,
        events: [CommittedEvent]
    ) {
        self.init(kind: kind, siteId: siteId, storeId: storeId, firstSeq: firstSeq, lastSeq: lastSeq, pendingFrom: pending?.site, outboxSize: outboxSize, events: events)
        scopePendingFrom = pending?.scopes
        otherScopesPendingFrom = pending?.otherScopes
    }

    /// Caps each completeness claim at `now` (the hub's clock). A claim is "nothing before this
    /// is missing"; one in the future (an edge clock running ahead, a bad or hostile edge) would
    /// have the hub vouch for data nobody has recorded yet and show the site's lag as 0. A lower
    /// claim is always true, so capping loses nothing but promptness.
    public mutating func capClaims(at now: Timestamp) {
        pendingFrom = pendingFrom.map { min($0, now) }
        scopePendingFrom = scopePendingFrom?.mapValues { min($0, now) }
        otherScopesPendingFrom = otherScopesPendingFrom.map { min($0, now) }
    }
}

/// `pendingFrom` for the site as a whole and per scope (sync.md: `completeThrough` per scope).
public struct PendingFrom: Sendable, Hashable {
    public var site: Timestamp
    public var scopes: [String: Timestamp]
    public var otherScopes: Timestamp

    public init(site: Timestamp, scopes: [String: Timestamp], otherScopes: Timestamp) {
        self.site = site
        self.scopes = scopes
        self.otherScopes = otherScopes
    }
}

/// What the hub did with a batch. Every case carries the site's `ackedSeq` after it.
public enum SyncApplyOutcome: Sendable, Hashable {
    /// Applied (its new part, when it overlapped what was already acknowledged).
    case applied(SyncWatermark, accepted: Int, duplicates: Int)
    /// Everything in it was acknowledged before: an idempotent replay; nothing changed.
    case alreadyApplied(SyncWatermark)
    /// It starts after `ackedSeq + 1`: the edge must resume from `ackedSeq` (HTTP 409).
    case gap(SyncWatermark)

    public var watermark: SyncWatermark {
        switch self {
        case .applied(let w, _, _), .alreadyApplied(let w), .gap(let w): w
        }
    }
}

/// What applying a batch did: the outcome, and the events the store accepted with the `ingestSeq`
/// it gave each (the hub's LIVE streams are fed from these, as from an ingest).
public struct SyncApplyResult: Sendable {
    public var outcome: SyncApplyOutcome
    /// The events appended (the batch's new part), and per event its `ingestSeq` (nil: duplicate).
    public var appended: [Event]
    public var ingestSeqs: [Int64?]

    public init(_ outcome: SyncApplyOutcome, appended: [Event] = [], ingestSeqs: [Int64?] = []) {
        self.outcome = outcome
        self.appended = appended
        self.ingestSeqs = ingestSeqs
    }
}

/// The hub's watermark for one (siteId, storeId): the truth the edge resumes from.
public struct SyncWatermark: Sendable, Hashable {
    public var ackedSeq: Int64
    /// The `eventId` of the event at `ackedSeq`, when the hub knows it: an edge that does not hold
    /// that event at that position is not the store the hub acknowledged (a restored backup, a
    /// copied file) and must not resume under this `storeId`.
    public var lastEventId: EventID?

    public init(ackedSeq: Int64, lastEventId: EventID?) {
        self.ackedSeq = ackedSeq
        self.lastEventId = lastEventId
    }
}

/// One site's state at the hub, for `GET /v1/sync/sites`.
public struct SyncSite: Sendable, Hashable {
    /// The reserved site of `nova migrate` and of the dual-write shadow: its watermark is a
    /// copy's checkpoint, not a live site's claim, so it never holds back completeness (it
    /// reports no `pendingFrom`, which would read as "complete through 1970" for good).
    public static let migrationSiteId = "nova-migrate"

    public var siteId: String
    public var storeId: String
    public var ackedSeq: Int64
    public var completeThrough: Timestamp?
    public var pendingEvents: Int64
    public var lastContactAt: Timestamp
    public var batchesApplied: Int64
    public var eventsApplied: Int64
    /// Per scope with events the site had pending at its last report, how far that scope is
    /// complete; `otherScopesCompleteThrough` for every other scope. Empty and nil when the site
    /// never said (then `completeThrough` holds for each scope).
    public var scopesCompleteThrough: [String: Timestamp] = [:]
    public var otherScopesCompleteThrough: Timestamp?

    /// Up to when this site's events of `scope` are all here.
    public func completeThrough(scope: String) -> Timestamp? {
        scopesCompleteThrough[scope] ?? otherScopesCompleteThrough ?? completeThrough
    }

    public init(
        siteId: String, storeId: String, ackedSeq: Int64, completeThrough: Timestamp?, pendingEvents: Int64, lastContactAt: Timestamp,
        batchesApplied: Int64, eventsApplied: Int64
    ) {
        self.siteId = siteId
        self.storeId = storeId
        self.ackedSeq = ackedSeq
        self.completeThrough = completeThrough
        self.pendingEvents = pendingEvents
        self.lastContactAt = lastContactAt
        self.batchesApplied = batchesApplied
        self.eventsApplied = eventsApplied
    }
}

/// An edge store's outbox: its identity, its head, and the last acknowledgement it recorded (a
/// cache of the hub's truth, kept so that retention and status work while the hub is away).
public struct OutboxState: Sendable, Hashable {
    public var storeId: String
    public var lastSeq: Int64
    public var ackedSeq: Int64

    public init(storeId: String, lastSeq: Int64, ackedSeq: Int64) {
        self.storeId = storeId
        self.lastSeq = lastSeq
        self.ackedSeq = ackedSeq
    }

    public var pendingEvents: Int64 { Swift.max(0, lastSeq - ackedSeq) }
}

/// A request for bucket digests (sync.md): per lane and time bucket of one scope, the event count
/// and the XOR of the eventIds. Equal digests mean equal sets of events.
public struct DigestRequest: Sendable, Hashable {
    public var scopeId: String
    public var range: Range<Timestamp>
    public var timebase: Timebase
    public var lanes: [Lane]
    /// Bucket width in microseconds; buckets start at multiples of it since the epoch.
    public var bucketMicros: Int64

    public init(scopeId: String, range: Range<Timestamp>, timebase: Timebase = .canonical, lanes: [Lane] = Lane.allCases, bucketMicros: Int64) {
        self.scopeId = scopeId
        self.range = range
        self.timebase = timebase
        self.lanes = Array(Set(lanes)).sorted()
        self.bucketMicros = bucketMicros
    }

    /// The start of the bucket holding `time`.
    public func bucketStart(_ time: Int64) -> Int64 {
        Self.bucketStart(time, width: bucketMicros)
    }

    /// The start of the bucket of `width` microseconds holding `time`.
    public static func bucketStart(_ time: Int64, width: Int64) -> Int64 {
        time.floorDivided(by: width).quotient * width
    }
}

public struct BucketDigest: Sendable, Hashable {
    public var lane: Lane
    public var bucketStart: Timestamp
    public var count: Int64
    public var xor: EventID

    public init(lane: Lane, bucketStart: Timestamp, count: Int64, xor: EventID) {
        self.lane = lane
        self.bucketStart = bucketStart
        self.count = count
        self.xor = xor
    }
}

extension [BucketDigest] {
    /// Folds (lane, bucket, eventId) rows, in any order, into digests sorted by lane then bucket.
    public static func folding(_ rows: [(lane: Lane, bucket: Int64, id: EventID)]) -> [BucketDigest] {
        var folded = [DigestKey: (count: Int64, xor: EventID)]()
        for row in rows {
            let key = DigestKey(lane: row.lane, bucket: Timestamp(microseconds: row.bucket))
            let old = folded[key] ?? (0, .zero)
            folded[key] = (old.count + 1, old.xor ^ row.id)
        }
        return folded.map { BucketDigest(lane: $0.key.lane, bucketStart: $0.key.bucket, count: $0.value.count, xor: $0.value.xor) }
            .sorted { ($0.lane, $0.bucketStart) < ($1.lane, $1.bucketStart) }
    }
}

private struct DigestKey: Hashable, Comparable {
    var lane: Lane
    var bucket: Timestamp
    static func < (x: DigestKey, y: DigestKey) -> Bool { (x.lane, x.bucket) < (y.lane, y.bucket) }
}

/// One bucket where two stores differ.
public struct DigestDifference: Sendable, Hashable {
    public var lane: Lane
    public var bucketStart: Timestamp
    public var left: Int64
    public var right: Int64

    /// The buckets of `a` and `b` (each sorted as ``folding(_:)`` sorts) whose counts or digests
    /// differ, a bucket missing on one side counting as empty there.
    public static func compare(_ a: [BucketDigest], _ b: [BucketDigest]) -> [DigestDifference] {
        let left = Dictionary(a.map { (DigestKey(lane: $0.lane, bucket: $0.bucketStart), $0) }, uniquingKeysWith: { x, _ in x })
        let right = Dictionary(b.map { (DigestKey(lane: $0.lane, bucket: $0.bucketStart), $0) }, uniquingKeysWith: { x, _ in x })
        return Set(left.keys).union(right.keys).sorted().compactMap { key in
            let l = left[key]
            let r = right[key]
            guard l?.count != r?.count || l?.xor != r?.xor else { return nil }
            return DigestDifference(lane: key.lane, bucketStart: key.bucket, left: l?.count ?? 0, right: r?.count ?? 0)
        }
    }
}

/// What a store does with a batch given the site's `ackedSeq`: the decision of sync.md's step 2,
/// shared by every backend so that they cannot differ on it.
public enum SyncApplyPlan: Sendable {
    /// Acknowledged before: answer the watermark, change nothing.
    case replay
    /// Starts after `ackedSeq + 1`: answer 409 with the watermark.
    case gap
    /// Insert these (the batch's part after `ackedSeq`; all of a repair batch).
    case apply([CommittedEvent])
    /// A heartbeat in step with the watermark: record its `pendingFrom` and the contact.
    case touch

    public init(_ batch: SyncBatch, ackedSeq: Int64) {
        switch batch.kind {
        case .repair:
            self = .apply(batch.events)
        case .heartbeat:
            self = batch.lastSeq == ackedSeq ? .touch : batch.lastSeq < ackedSeq ? .replay : .gap
        case .outbox:
            if batch.lastSeq <= ackedSeq {
                self = .replay
            } else if batch.firstSeq > ackedSeq + 1 {
                self = .gap
            } else {
                self = .apply(batch.events.filter { $0.seq > ackedSeq })
            }
        }
    }
}

/// An edge's view of its outbox and its link to the hub, for `GET /v1/sync/status`.
public struct SyncStatusReport: Sendable, Hashable {
    public var siteId: String
    public var storeId: String
    public var pendingEvents: Int64
    /// Age of the oldest unacknowledged event's canonical time; nil when nothing is pending.
    public var oldestPendingAgeSeconds: Double?
    public var ackedSeq: Int64
    public var lastAckAt: Timestamp?
    /// How long the shipper waits before its next attempt (0 when it is not backing off).
    public var backoffSeconds: Double
    public var lastError: String?
    public var upstreamReachable: Bool

    public init(
        siteId: String, storeId: String, pendingEvents: Int64, oldestPendingAgeSeconds: Double?, ackedSeq: Int64, lastAckAt: Timestamp?,
        backoffSeconds: Double, lastError: String?, upstreamReachable: Bool
    ) {
        self.siteId = siteId
        self.storeId = storeId
        self.pendingEvents = pendingEvents
        self.oldestPendingAgeSeconds = oldestPendingAgeSeconds
        self.ackedSeq = ackedSeq
        self.lastAckAt = lastAckAt
        self.backoffSeconds = backoffSeconds
        self.lastError = lastError
        self.upstreamReachable = upstreamReachable
    }
}

extension DigestRequest {
    /// A bucket width such as `1m`, `30s`, `500ms`, `1h` or `1d`, in microseconds.
    public static let maxBucketMicros: Int64 = 36_500 * 86_400_000_000

    public static func parseBucket(_ text: String) -> Int64? {
        let units: [(String, Int64)] = [("us", 1), ("ms", 1_000), ("s", 1_000_000), ("m", 60_000_000), ("h", 3_600_000_000), ("d", 86_400_000_000)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            // At most 100 years: wider has no use, and products of widths must stay far from overflow.
            guard let n = Int64(text.dropLast(suffix.count)), n > 0, n <= Self.maxBucketMicros / scale else { return nil }
            return n * scale
        }
        return nil
    }
}

extension SyncBatch {
    /// A `storeId` as both ends exchange it: sync.md makes it a UUID, which is read in either case
    /// (RFC 9562) and kept in lowercase, as the stores create it, so that one edge store never
    /// has two watermarks at the hub. Nil when `text` is not a UUID.
    public static func storeId(_ text: String) -> String? {
        guard text.utf8.count == 36, let uuid = UUID(uuidString: text) else { return nil }
        return uuid.uuidString.lowercased()
    }

    /// The rule ``storeId(_:)`` checks, for error messages.
    public static let storeIdRule = "must be a UUID such as 0b5c1a8e-3f4d-4a5b-9c6d-7e8f9a0b1c2d (a new edge store makes one)"
}
