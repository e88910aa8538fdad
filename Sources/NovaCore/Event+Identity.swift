extension Event {
    /// The canonical pre-image of event-model.md ("Identity: eventId"), whose SHA-256 is the id.
    public static func preimage(scopeId: String, sourceTruthTime: Timestamp, fields: LaneFields) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(96 + (fields.payload?.utf8.count ?? 0))
        writePreimage(scopeId: scopeId, sourceTruthTime: sourceTruthTime, fields: fields, into: &out)
        return out
    }

    /// Appends the pre-image to `out` (a sync batch of version 2 carries it as it is).
    public static func writePreimage(scopeId: String, sourceTruthTime: Timestamp, fields: LaneFields, into out: inout [UInt8]) {
        out.appendString(preimageTag)
        out.appendString(fields.lane.rawValue)
        out.appendString(scopeId)
        out.appendInt64(sourceTruthTime.microseconds)
        switch fields {
        case .raw(let connectionId, let sequence, let bytes):
            out.appendString(connectionId)
            out.appendInt64(sequence)
            out.appendBlob(bytes)
        case .parsed(let streamId, let streamType, let schemaVersion, let payload):
            out.appendString(streamId)
            out.appendString(streamType)
            out.appendString(schemaVersion)
            out.appendBlob(payload.utf8)
        case .ui(let viewId, let payload):
            out.appendString(viewId)
            out.appendBlob(payload.utf8)
        case .command(let targetId, let commandType, let requestedBy, let payload):
            out.appendString(targetId)
            out.appendString(commandType)
            out.appendString(requestedBy)
            out.appendBlob(payload.utf8)
        case .metadata(let metadataType, let payload):
            out.appendString(metadataType)
            out.appendBlob(payload.utf8)
        }
    }

    /// The length of this event's pre-image, without writing it (a sync batch's size is bounded
    /// before it is encoded).
    public var preimageLength: Int {
        func string(_ s: String) -> Int { 4 + s.utf8.count }
        let common = string(Event.preimageTag) + string(fields.lane.rawValue) + string(scopeId) + 8
        switch fields {
        case .raw(let connectionId, _, let bytes): return common + string(connectionId) + 8 + 4 + bytes.count
        case .parsed(let streamId, let streamType, let schemaVersion, let payload):
            return common + string(streamId) + string(streamType) + string(schemaVersion) + 4 + payload.utf8.count
        case .ui(let viewId, let payload): return common + string(viewId) + 4 + payload.utf8.count
        case .command(let targetId, let commandType, let requestedBy, let payload):
            return common + string(targetId) + string(commandType) + string(requestedBy) + 4 + payload.utf8.count
        case .metadata(let metadataType, let payload): return common + string(metadataType) + 4 + payload.utf8.count
        }
    }

    /// The pre-image's first field, which versions it.
    public static let preimageTag = "nova.event.v1"

    /// The id this event's content hashes to; equal to `eventId` for every well-formed event.
    public var computedEventId: EventID {
        EventID(hashing: Event.preimage(scopeId: scopeId, sourceTruthTime: sourceTruthTime, fields: fields))
    }
}

extension [UInt8] {
    mutating func appendUInt32(_ n: UInt32) {
        append(UInt8(truncatingIfNeeded: n >> 24))
        append(UInt8(truncatingIfNeeded: n >> 16))
        append(UInt8(truncatingIfNeeded: n >> 8))
        append(UInt8(truncatingIfNeeded: n))
    }

    mutating func appendInt64(_ n: Int64) {
        let u = UInt64(bitPattern: n)
        for shift in stride(from: 56, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: u >> UInt64(shift))) }
    }

    mutating func appendString(_ s: String) {
        appendUInt32(UInt32(s.utf8.count))
        append(contentsOf: s.utf8)
    }

    mutating func appendBlob(_ b: [UInt8]) {
        appendUInt32(UInt32(b.count))
        append(contentsOf: b)
    }
}
