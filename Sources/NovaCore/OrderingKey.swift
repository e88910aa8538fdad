/// The position of an event in the contract order: time on one timebase, then lane rank, then the
/// lane's tiebreak (`connectionId`, `sequence`, `eventId` for raw; `eventId` for the others).
///
/// Non-raw lanes carry an empty `connectionId` and a zero `sequence`, so one comparison serves every
/// lane and the merged timeline. Strings compare by their UTF-8 bytes, as SQLite's BINARY and
/// PostgreSQL's `COLLATE "C"` do.
public struct OrderingKey: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var time: Timestamp
    public var lane: Lane
    public var connectionId: String
    public var sequence: Int64
    public var eventId: EventID

    public init(time: Timestamp, lane: Lane, connectionId: String = "", sequence: Int64 = 0, eventId: EventID) {
        self.time = time
        self.lane = lane
        self.connectionId = connectionId
        self.sequence = sequence
        self.eventId = eventId
    }

    public static func < (a: OrderingKey, b: OrderingKey) -> Bool {
        if a.time != b.time { return a.time < b.time }
        if a.lane != b.lane { return a.lane < b.lane }
        if a.connectionId != b.connectionId {
            return a.connectionId.utf8.lexicographicallyPrecedes(b.connectionId.utf8)
        }
        if a.sequence != b.sequence { return a.sequence < b.sequence }
        return a.eventId < b.eventId
    }

    public var description: String {
        "(\(time.rfc3339), \(lane), \(quoted(connectionId)), \(sequence), \(eventId.hex))"
    }
}
