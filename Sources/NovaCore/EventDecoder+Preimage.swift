import Crypto

extension EventDecoder {
    /// Builds an event from its pre-image (event-model.md, "Identity: eventId"), as a sync batch
    /// of version 2 carries it beside its id and canonical time. The id must be the pre-image's
    /// SHA-256, which is checked on the bytes as they arrived, before anything is parsed; the
    /// fields then follow the rules of the JSON form, and a payload must already be canonical
    /// (the id covers its canonical text, so any other text is not this event).
    public func decode(preimage: UnsafeRawBufferPointer, eventId: EventID, canonicalTruthTime: Int64) throws(EventValidationError) -> Event {
        var hash = SHA256()
        hash.update(bufferPointer: preimage)
        let computed = hash.finalize().withUnsafeBytes { EventID(bytes: $0)! }
        guard computed == eventId else {
            throw EventValidationError(field: "eventId", rule: "is not the SHA-256 of the event's pre-image (computed \(computed.hex))")
        }
        guard let canonical = Self.time(canonicalTruthTime) else {
            throw EventValidationError(field: "canonicalTruthTime", rule: "\(canonicalTruthTime) µs is outside 1970-01-01 through 9999-12-31")
        }
        var r = PreimageReader(bytes: preimage)
        guard try r.blob("pre-image tag").elementsEqual(Event.preimageTag.utf8) else {
            throw EventValidationError(field: nil, rule: "the pre-image does not start with \(Event.preimageTag)")
        }
        let laneName = try r.string("lane", maxBytes: 64)
        guard let lane = Lane(rawValue: laneName) else {
            throw EventValidationError(field: "lane", rule: LaneListError(name: laneName).description)
        }
        let maxString = limits.maxStringBytes
        let scopeId = try r.string("scopeId", maxBytes: maxString)
        guard !scopeId.isEmpty else { throw EventValidationError(field: "scopeId", rule: "must not be empty") }
        let sourceMicros = try r.int64("sourceTruthTime")
        guard let source = Self.time(sourceMicros) else {
            throw EventValidationError(field: "sourceTruthTime", rule: "\(sourceMicros) µs is outside 1970-01-01 through 9999-12-31")
        }
        let fields: LaneFields
        switch lane {
        case .raw:
            let connectionId = try r.string("connectionId", maxBytes: maxString)
            let sequence = try r.int64("sequence")
            let bytes = try r.blob("bytes")
            guard bytes.count <= limits.maxFrameBytes else {
                throw EventValidationError(field: "bytes", rule: "more than \(limits.maxFrameBytes) bytes decoded (\(bytes.count))")
            }
            fields = .raw(connectionId: connectionId, sequence: sequence, bytes: Array(bytes))
        case .parsed:
            fields = .parsed(
                streamId: try r.string("streamId", maxBytes: maxString), streamType: try r.string("streamType", maxBytes: maxString),
                schemaVersion: try r.string("schemaVersion", maxBytes: maxString), payload: try r.payload(maxBytes: limits.maxPayloadBytes))
        case .ui:
            fields = .ui(viewId: try r.string("viewId", maxBytes: maxString), payload: try r.payload(maxBytes: limits.maxPayloadBytes))
        case .command:
            fields = .command(
                targetId: try r.string("targetId", maxBytes: maxString), commandType: try r.string("commandType", maxBytes: maxString),
                requestedBy: try r.string("requestedBy", maxBytes: maxString), payload: try r.payload(maxBytes: limits.maxPayloadBytes))
        case .metadata:
            fields = .metadata(metadataType: try r.string("metadataType", maxBytes: maxString), payload: try r.payload(maxBytes: limits.maxPayloadBytes))
        }
        guard r.atEnd else {
            throw EventValidationError(field: nil, rule: "\(r.remaining) bytes follow the last field of the \(lane) lane's pre-image")
        }
        return Event(scopeId: scopeId, sourceTruthTime: source, canonicalTruthTime: canonical, eventId: eventId, fields: fields)
    }

    private static func time(_ micros: Int64) -> Timestamp? {
        (Timestamp.min.microseconds...Timestamp.max.microseconds).contains(micros) ? Timestamp(microseconds: micros) : nil
    }
}

/// Reads the length-prefixed fields of a pre-image (big-endian, as ``Event/writePreimage``
/// writes them), each fault naming the field.
private struct PreimageReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    var remaining: Int { bytes.count - offset }
    var atEnd: Bool { offset == bytes.count }

    mutating func take(_ n: Int, _ field: String) throws(EventValidationError) -> UnsafeRawBufferPointer {
        guard n <= remaining else {
            throw EventValidationError(field: field, rule: "the pre-image ends inside it (\(n) bytes needed, \(remaining) left)")
        }
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
    }

    mutating func int64(_ field: String) throws(EventValidationError) -> Int64 {
        Int64(bigEndian: try take(8, field).loadUnaligned(as: Int64.self))
    }

    mutating func blob(_ field: String) throws(EventValidationError) -> UnsafeRawBufferPointer {
        let n = UInt32(bigEndian: try take(4, field).loadUnaligned(as: UInt32.self))
        return try take(Int(n), field)
    }

    mutating func string(_ field: String, maxBytes: Int) throws(EventValidationError) -> String {
        let raw = try blob(field)
        guard raw.count <= maxBytes else {
            throw EventValidationError(field: field, rule: "longer than \(maxBytes) bytes of UTF-8 (\(raw.count))")
        }
        guard let s = String(validating: raw.bindMemory(to: UInt8.self), as: UTF8.self) else {
            throw EventValidationError(field: field, rule: "not valid UTF-8")
        }
        try EventDecoder.checkString(field, s, maxBytes: maxBytes)
        return s
    }

    mutating func payload(maxBytes: Int) throws(EventValidationError) -> CanonicalPayload {
        let raw = try blob("payload")
        try EventDecoder.checkPayloadSize(raw.count, maxBytes: maxBytes)
        let text = raw.bindMemory(to: UInt8.self)
        let value: JSONValue
        do {
            value = try JSONParser.parse(text)
        } catch {
            throw EventValidationError(field: "payload", rule: error.description)
        }
        guard case .object = value else {
            throw EventValidationError(field: "payload", rule: "must be a JSON object, found \(value.typeName)")
        }
        let canonical = CanonicalJSON.serialize(value)
        guard canonical.elementsEqual(text) else {
            throw EventValidationError(field: "payload", rule: "not in RFC 8785 canonical form (the id covers the canonical text)")
        }
        return CanonicalPayload(canonicalUTF8: canonical)
    }
}
