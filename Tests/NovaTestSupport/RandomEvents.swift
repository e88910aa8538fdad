import NovaCore

/// A small deterministic generator (SplitMix64), so a failing property test can be replayed from
/// the seed it prints.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random events that stress the ordering contract: few distinct times (so ties are common),
/// tiebreak strings that differ between bytewise and locale order, non-ASCII ids, and copies of
/// earlier events with another canonical time (duplicates by content).
public struct RandomEvents {
    public var rng: SeededGenerator
    public var scopes: [String]
    public let base = Timestamp(microseconds: 1_780_000_000_000_000)

    public init(seed: UInt64, scopes: [String] = ["site-a", "Site-B", "séance"]) {
        rng = SeededGenerator(seed: seed)
        self.scopes = scopes
    }

    public static let names = ["a", "B", "b", "é", "Z", "uart0", "uart10", "uart2", "ä", "日本", "A", ""]

    public mutating func time() -> Timestamp {
        Timestamp(microseconds: base.microseconds + Int64.random(in: 0..<40, using: &rng) * 250)
    }

    public mutating func name() -> String { Self.names.randomElement(using: &rng)! }

    public mutating func payload() -> CanonicalPayload {
        CanonicalPayload([
            JSONMember("v", .number(JSONNumber(Int64.random(in: -5...5, using: &rng)))),
            JSONMember(name(), .string(name())),
        ])
    }

    public mutating func event() -> Event {
        let lane = Lane.allCases.randomElement(using: &rng)!
        let fields: LaneFields
        switch lane {
        case .raw:
            fields = .raw(connectionId: name(), sequence: Int64.random(in: -2...3, using: &rng), bytes: [UInt8.random(in: 0...3, using: &rng)])
        case .parsed:
            fields = .parsed(streamId: name(), streamType: "t", schemaVersion: "1", payload: payload())
        case .ui:
            fields = .ui(viewId: name(), payload: payload())
        case .command:
            fields = .command(targetId: name(), commandType: "c", requestedBy: name(), payload: payload())
        case .metadata:
            fields = .metadata(metadataType: name(), payload: payload())
        }
        return Event(scopeId: scopes.randomElement(using: &rng)!, sourceTruthTime: time(), canonicalTruthTime: time(), fields: fields)
    }

    /// `count` events, about a tenth of them copies of earlier ones with another canonical time.
    public mutating func events(_ count: Int) -> [Event] {
        var out = [Event]()
        for _ in 0..<count {
            if let earlier = out.randomElement(using: &rng), Int.random(in: 0..<10, using: &rng) == 0 {
                var copy = earlier
                copy.canonicalTruthTime = time()
                out.append(copy)
            } else {
                out.append(event())
            }
        }
        return out
    }
}

/// The contract's answer computed in memory: dedupe keeping the first copy, filter, sort.
public func expectedOrder(_ ingested: [Event], scopeId: String, timebase: Timebase, lanes: [Lane], range: Range<Timestamp>, filters: [Lane: String] = [:]) -> [Event] {
    var seen = Set<EventID>()
    var kept = [Event]()
    for event in ingested where seen.insert(event.eventId).inserted {
        kept.append(event)
    }
    return kept.filter { e in
        e.scopeId == scopeId && lanes.contains(e.lane) && range.contains(e.time(timebase))
            && (filters[e.lane].map { e.fields.filterValue == $0 } ?? true)
    }.sorted { $0.orderingKey(timebase) < $1.orderingKey(timebase) }
}
