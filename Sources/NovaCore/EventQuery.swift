/// An ordered range query: one scope, a half-open time range on one timebase, one or more lanes
/// (several lanes merge into a timeline), optional per-lane filters, a page size and a cursor.
public struct EventQuery: Sendable, Hashable {
    public var scopeId: String
    /// Half-open: `lowerBound <= t < upperBound` on `timebase`.
    public var range: Range<Timestamp>
    public var timebase: Timebase
    /// In rank order, without repeats, never empty.
    public var lanes: [Lane]
    /// At most one equality filter per lane, on the lane's ``Lane/filterField``.
    public var filters: [Lane: String]
    public var limit: Int
    /// Resume strictly after this key (keyset pagination).
    public var after: OrderingKey?
    /// Only events committed at or before this `ingestSeq` (a stream's snapshot), when set.
    public var throughSeq: Int64?
    /// When set, a page ends once its events' content (``Event/preimageLength``) reaches this
    /// many bytes, with fewer than `limit` events and a cursor: `limit` alone lets a page of
    /// megabyte events take gigabytes. Always at least one event.
    public var maxBytes: Int?

    public init(
        scopeId: String, range: Range<Timestamp>, timebase: Timebase = .canonical, lanes: [Lane] = Lane.allCases,
        filters: [Lane: String] = [:], limit: Int = 10_000, after: OrderingKey? = nil, throughSeq: Int64? = nil, maxBytes: Int? = nil
    ) {
        self.scopeId = scopeId
        self.range = range
        self.timebase = timebase
        self.lanes = Array(Set(lanes)).sorted()
        self.filters = filters
        self.limit = limit
        self.after = after
        self.throughSeq = throughSeq
        self.maxBytes = maxBytes
    }

    /// The read of one lane that this query starts with, or continues with after `key`.
    ///
    /// Lanes that rank before the key's lane resume at the next microsecond, the key's own lane
    /// strictly after the key, later lanes at the key's time: together, exactly the events after it.
    public func laneRead(_ lane: Lane, after key: OrderingKey?, limit: Int) -> LaneRead {
        var from = range.lowerBound
        var laneKey: OrderingKey?
        if let key {
            if lane < key.lane {
                from = Swift.max(from, Timestamp(microseconds: key.time.microseconds + 1))
            } else if lane == key.lane {
                laneKey = key
            } else {
                from = Swift.max(from, key.time)
            }
        }
        return LaneRead(
            lane: lane, scopeId: scopeId, timebase: timebase, from: from, to: range.upperBound,
            filter: filters[lane], after: laneKey, limit: limit, throughSeq: throughSeq, maxBytes: maxBytes)
    }
}

extension LaneFields {
    /// The value of the lane's ``Lane/filterField``.
    public var filterValue: String {
        switch self {
        case .raw(let connectionId, _, _): connectionId
        case .parsed(let streamId, _, _, _): streamId
        case .ui(let viewId, _): viewId
        case .command(let targetId, _, _, _): targetId
        case .metadata(let metadataType, _): metadataType
        }
    }
}

extension Lane {
    /// The field that `GET /v1/events` can filter this lane on.
    public var filterField: String {
        switch self {
        case .raw: "connectionId"
        case .parsed: "streamId"
        case .ui: "viewId"
        case .command: "targetId"
        case .metadata: "metadataType"
        }
    }

    /// The lane whose filter field is `name`, if any.
    public init?(filterField name: String) {
        guard let lane = Lane.allCases.first(where: { $0.filterField == name }) else { return nil }
        self = lane
    }
}

/// One ordered read of one lane, which every store implements with an index range scan.
public struct LaneRead: Sendable, Hashable {
    public var lane: Lane
    public var scopeId: String
    public var timebase: Timebase
    /// Inclusive lower bound on the timebase.
    public var from: Timestamp
    /// Exclusive upper bound on the timebase.
    public var to: Timestamp
    /// Equality on the lane's ``Lane/filterField``.
    public var filter: String?
    /// When set (always of this lane), only events ordered strictly after it.
    public var after: OrderingKey?
    public var limit: Int
    /// When set, only events with `ingestSeq <= throughSeq`.
    public var throughSeq: Int64?
    /// When set, the read stops once its events' content reaches this many bytes (see
    /// ``EventQuery/maxBytes``), which ``LaneReadResult/reachedBytes`` tells its caller.
    public var maxBytes: Int?

    public init(
        lane: Lane, scopeId: String, timebase: Timebase, from: Timestamp, to: Timestamp, filter: String? = nil,
        after: OrderingKey? = nil, limit: Int, throughSeq: Int64? = nil, maxBytes: Int? = nil
    ) {
        self.lane = lane
        self.scopeId = scopeId
        self.timebase = timebase
        self.from = from
        self.to = to
        self.filter = filter
        self.after = after
        self.limit = limit
        self.throughSeq = throughSeq
        self.maxBytes = maxBytes
    }
}

extension Array {
    /// How many elements, from the first, it takes for their `bytes` to reach `maxBytes` (nil:
    /// they never do): where a read bounded by bytes stops. By index, so that no element is
    /// copied.
    func countReaching(_ maxBytes: Int, bytes: (Element) -> Int) -> Int? {
        var total = 0
        for k in indices {
            total += bytes(self[k])
            if total >= maxBytes { return k + 1 }
        }
        return nil
    }
}

/// A lane read's events.
public struct LaneReadResult: Sendable {
    public var events: [Event]
    /// The read stopped at its ``LaneRead/maxBytes``, so more may follow even with fewer events
    /// than its limit. The store sums the bytes as it reads: summed again from the events, each
    /// event was copied (perf of the hub's query path: about 2% of its CPU).
    public var reachedBytes: Bool

    public init(events: [Event], reachedBytes: Bool) {
        self.events = events
        self.reachedBytes = reachedBytes
    }
}

/// One page of an ordered query.
public struct EventPage: Sendable {
    public var events: [Event]
    /// The key to resume after, when more events follow.
    public var next: OrderingKey?

    public init(events: [Event], next: OrderingKey?) {
        self.events = events
        self.next = next
    }
}
