/// One recorded event: the fields every lane shares plus its lane's own.
///
/// A `Sendable` value; once built by ``EventDecoder`` or read from a store, `eventId` is the hash of
/// its content (stores rely on that to dedupe globally through per-lane keys).
public struct Event: Sendable, Hashable {
    public var scopeId: String
    public var sourceTruthTime: Timestamp
    public var canonicalTruthTime: Timestamp
    public var eventId: EventID
    public var fields: LaneFields

    public var lane: Lane { fields.lane }

    public init(scopeId: String, sourceTruthTime: Timestamp, canonicalTruthTime: Timestamp, eventId: EventID, fields: LaneFields) {
        self.scopeId = scopeId
        self.sourceTruthTime = sourceTruthTime
        self.canonicalTruthTime = canonicalTruthTime
        self.eventId = eventId
        self.fields = fields
    }

    /// Builds an event and computes its id from the content.
    public init(scopeId: String, sourceTruthTime: Timestamp, canonicalTruthTime: Timestamp, fields: LaneFields) {
        self.init(
            scopeId: scopeId, sourceTruthTime: sourceTruthTime, canonicalTruthTime: canonicalTruthTime,
            eventId: EventID(hashing: Event.preimage(scopeId: scopeId, sourceTruthTime: sourceTruthTime, fields: fields)),
            fields: fields)
    }

    public func time(_ timebase: Timebase) -> Timestamp {
        timebase == .canonical ? canonicalTruthTime : sourceTruthTime
    }

    /// The key that orders this event in its lane or in a timeline on `timebase`.
    public func orderingKey(_ timebase: Timebase) -> OrderingKey {
        if case .raw(let connectionId, let sequence, _) = fields {
            return OrderingKey(time: time(timebase), lane: .raw, connectionId: connectionId, sequence: sequence, eventId: eventId)
        }
        return OrderingKey(time: time(timebase), lane: lane, eventId: eventId)
    }
}

/// The lane-specific part of an event. Payloads are held as their RFC 8785 canonical text.
public enum LaneFields: Sendable, Hashable {
    case raw(connectionId: String, sequence: Int64, bytes: [UInt8])
    case parsed(streamId: String, streamType: String, schemaVersion: String, payload: CanonicalPayload)
    case ui(viewId: String, payload: CanonicalPayload)
    case command(targetId: String, commandType: String, requestedBy: String, payload: CanonicalPayload)
    case metadata(metadataType: String, payload: CanonicalPayload)

    public var lane: Lane {
        switch self {
        case .raw: .raw
        case .parsed: .parsed
        case .ui: .ui
        case .command: .command
        case .metadata: .metadata
        }
    }

    public var payload: CanonicalPayload? {
        switch self {
        case .raw: nil
        case .parsed(_, _, _, let p), .ui(_, let p), .command(_, _, _, let p), .metadata(_, let p): p
        }
    }
}

/// A JSON object in RFC 8785 canonical form, as UTF-8 text.
///
/// Keeping the canonical bytes (not a parsed tree) means the id can be recomputed from what a store
/// holds, and every store answers with the same bytes.
public struct CanonicalPayload: Sendable, Hashable, CustomStringConvertible {
    public var utf8: [UInt8]

    /// Wraps bytes that are already canonical (from a store that only ever holds canonical text).
    public init(canonicalUTF8: [UInt8]) {
        self.utf8 = canonicalUTF8
    }

    /// Canonicalizes a JSON object.
    public init(_ object: [JSONMember]) {
        self.utf8 = CanonicalJSON.serialize(.object(object))
    }

    public var description: String { String(decoding: utf8, as: UTF8.self) }

    public static let empty = CanonicalPayload(canonicalUTF8: Array("{}".utf8))
}
