import Foundation

/// Why one event was rejected: the field and the rule it broke.
///
/// `description` reads `sourceTruthTime: not an RFC 3339 timestamp: "27/01/2026 14:32"`; the
/// ingest path prefixes the event's position (`events[3].`).
public struct EventValidationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The JSON field, or nil when the event as a whole is wrong (not an object, bad JSON).
    public var field: String?
    public var rule: String

    public init(field: String?, rule: String) {
        self.field = field
        self.rule = rule
    }

    public var description: String { field.map { "\($0): \(rule)" } ?? rule }

    /// The message for the event at `index` of a batch.
    public func message(index: Int) -> String {
        field.map { "events[\(index)].\($0): \(rule)" } ?? "events[\(index)]: \(rule)"
    }
}

/// Turns one JSON event of the ingest API into a validated ``Event``: every rule of
/// event-model.md, the id computed (and checked when given), `canonicalTruthTime` defaulted to the
/// time of receipt.
public struct EventDecoder: Sendable {
    public var limits: EventLimits

    public init(limits: EventLimits = .contract) {
        self.limits = limits
    }

    /// Decodes one event from its JSON text (one NDJSON line).
    public func decode(json: UnsafeBufferPointer<UInt8>, receivedAt: Timestamp) -> Result<Event, EventValidationError> {
        let value: JSONValue
        do {
            value = try JSONParser.parse(json)
        } catch {
            return .failure(EventValidationError(field: nil, rule: error.description))
        }
        return decode(value, receivedAt: receivedAt)
    }

    public func decode(_ value: JSONValue, receivedAt: Timestamp) -> Result<Event, EventValidationError> {
        do {
            return .success(try decodeThrowing(value, receivedAt: receivedAt))
        } catch {
            return .failure(error)
        }
    }

    private static let commonFields = ["lane", "scopeId", "sourceTruthTime", "canonicalTruthTime", "eventId"]

    private func decodeThrowing(_ value: JSONValue, receivedAt: Timestamp) throws(EventValidationError) -> Event {
        guard case .object(let members) = value else {
            throw EventValidationError(field: nil, rule: "expected a JSON object, found \(value.typeName)")
        }
        let fields = Fields(members: members)
        let laneName = try fields.string("lane", maxBytes: 64)
        guard let lane = Lane(rawValue: laneName) else {
            throw EventValidationError(field: "lane", rule: LaneListError(name: laneName).description)
        }
        for member in members where !Self.commonFields.contains(member.key) && !lane.fieldNames.contains(member.key) {
            throw EventValidationError(field: member.key, rule: "not a field of lane \(lane)")
        }
        let scopeId = try fields.string("scopeId", maxBytes: limits.maxStringBytes)
        guard !scopeId.isEmpty else { throw EventValidationError(field: "scopeId", rule: "must not be empty") }
        let source = try fields.time("sourceTruthTime")
        let canonical = try fields.optionalTime("canonicalTruthTime") ?? receivedAt
        let laneFields: LaneFields
        let maxString = limits.maxStringBytes
        switch lane {
        case .raw:
            laneFields = .raw(
                connectionId: try fields.string("connectionId", maxBytes: maxString),
                sequence: try fields.int64("sequence"),
                bytes: try fields.base64("bytes", maxBytes: limits.maxFrameBytes))
        case .parsed:
            laneFields = .parsed(
                streamId: try fields.string("streamId", maxBytes: maxString),
                streamType: try fields.string("streamType", maxBytes: maxString),
                schemaVersion: try fields.string("schemaVersion", maxBytes: maxString),
                payload: try fields.payload(maxBytes: limits.maxPayloadBytes))
        case .ui:
            laneFields = .ui(
                viewId: try fields.string("viewId", maxBytes: maxString),
                payload: try fields.payload(maxBytes: limits.maxPayloadBytes))
        case .command:
            laneFields = .command(
                targetId: try fields.string("targetId", maxBytes: maxString),
                commandType: try fields.string("commandType", maxBytes: maxString),
                requestedBy: try fields.string("requestedBy", maxBytes: maxString),
                payload: try fields.payload(maxBytes: limits.maxPayloadBytes))
        case .metadata:
            laneFields = .metadata(
                metadataType: try fields.string("metadataType", maxBytes: maxString),
                payload: try fields.payload(maxBytes: limits.maxPayloadBytes))
        }
        let event = Event(scopeId: scopeId, sourceTruthTime: source, canonicalTruthTime: canonical, fields: laneFields)
        if let given = fields.members["eventId"] {
            guard case .string(let hex) = given, let claimed = EventID(hex: hex) else {
                throw EventValidationError(field: "eventId", rule: "must be 64 hex digits")
            }
            guard claimed == event.eventId else {
                throw EventValidationError(
                    field: "eventId", rule: "does not match the event's content (computed \(event.eventId.hex))")
            }
        }
        return event
    }
}

extension EventDecoder {
    /// The rules every string field follows, in either wire form.
    static func checkString(_ name: String, _ s: String, maxBytes: Int) throws(EventValidationError) {
        if s.utf8.count > maxBytes {
            throw EventValidationError(field: name, rule: "longer than \(maxBytes) bytes of UTF-8 (\(s.utf8.count))")
        }
        if s.utf8.contains(0) {
            throw EventValidationError(field: name, rule: "must not contain NUL (U+0000)")
        }
    }

    static func checkPayloadSize(_ count: Int, maxBytes: Int) throws(EventValidationError) {
        guard count <= maxBytes else {
            throw EventValidationError(field: "payload", rule: "larger than \(maxBytes) bytes as canonical JSON (\(count))")
        }
    }
}

/// Typed access to the members of one event object, each failure naming the field and the rule.
private struct Fields {
    /// An event has a handful of members: a linear scan beats hashing every key.
    struct Members {
        let list: [JSONMember]
        subscript(name: String) -> JSONValue? { list.first { $0.key == name }?.value }
    }

    let members: Members

    init(members list: [JSONMember]) {
        members = Members(list: list)
    }

    func required(_ name: String) throws(EventValidationError) -> JSONValue {
        guard let value = members[name] else { throw EventValidationError(field: name, rule: "required") }
        return value
    }

    func string(_ name: String, maxBytes: Int) throws(EventValidationError) -> String {
        guard case .string(let s) = try required(name) else {
            throw EventValidationError(field: name, rule: "must be a string, found \(members[name]!.typeName)")
        }
        try checkString(name, s, maxBytes: maxBytes)
        return s
    }

    func checkString(_ name: String, _ s: String, maxBytes: Int) throws(EventValidationError) {
        try EventDecoder.checkString(name, s, maxBytes: maxBytes)
    }

    func time(_ name: String) throws(EventValidationError) -> Timestamp {
        guard case .string(let s) = try required(name) else {
            throw EventValidationError(field: name, rule: "must be an RFC 3339 string, found \(members[name]!.typeName)")
        }
        do {
            return try Timestamp(rfc3339: s)
        } catch {
            throw EventValidationError(field: name, rule: error.description)
        }
    }

    func optionalTime(_ name: String) throws(EventValidationError) -> Timestamp? {
        members[name] == nil ? nil : try time(name)
    }

    func int64(_ name: String) throws(EventValidationError) -> Int64 {
        guard case .number(let n) = try required(name) else {
            throw EventValidationError(field: name, rule: "must be an integer, found \(members[name]!.typeName)")
        }
        guard n.isIntegerLiteral else {
            throw EventValidationError(field: name, rule: "must be an integer, found \(n.double)")
        }
        guard let value = n.int64 else {
            throw EventValidationError(field: name, rule: "outside the int64 range")
        }
        return value
    }

    func base64(_ name: String, maxBytes: Int) throws(EventValidationError) -> [UInt8] {
        guard case .string(let s) = try required(name) else {
            throw EventValidationError(field: name, rule: "must be a base64 string, found \(members[name]!.typeName)")
        }
        if s.isEmpty { return [] }
        guard let bytes = Base64.decode(s) else {
            throw EventValidationError(field: name, rule: "not valid base64 (RFC 4648, with padding)")
        }
        guard bytes.count <= maxBytes else {
            throw EventValidationError(field: name, rule: "more than \(maxBytes) bytes decoded (\(bytes.count))")
        }
        return bytes
    }

    func payload(maxBytes: Int) throws(EventValidationError) -> CanonicalPayload {
        guard case .object(let object) = try required("payload") else {
            throw EventValidationError(field: "payload", rule: "must be a JSON object, found \(members["payload"]!.typeName)")
        }
        let payload = CanonicalPayload(object)
        try EventDecoder.checkPayloadSize(payload.utf8.count, maxBytes: maxBytes)
        return payload
    }
}
