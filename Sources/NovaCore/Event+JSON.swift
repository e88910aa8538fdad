import Foundation

extension Event {
    /// Appends this event as one JSON object (no newline) in the answer form of api.md: every field,
    /// normalized times, `eventId` as hex, `bytes` as base64, `payload` as canonical JSON.
    public func writeJSON(into out: inout [UInt8]) {
        out.append(atMost: jsonCapacity) { writeJSON(to: &$0) }
    }

    /// The most bytes ``writeJSON(to:)`` writes for this event.
    public var jsonCapacity: Int {
        // Keys and punctuation (at most 150 bytes for any lane), two times, the id's hex.
        var n = 150 + 2 * 27 + 64 + CanonicalJSON.stringCapacity(scopeId)
        switch fields {
        case .raw(let connectionId, _, let bytes):
            n += CanonicalJSON.stringCapacity(connectionId) + 20 + Base64.encodedLength(bytes.count)
        case .parsed(let streamId, let streamType, let schemaVersion, let payload):
            n += CanonicalJSON.stringCapacity(streamId) + CanonicalJSON.stringCapacity(streamType)
                + CanonicalJSON.stringCapacity(schemaVersion) + payload.utf8.count
        case .ui(let viewId, let payload):
            n += CanonicalJSON.stringCapacity(viewId) + payload.utf8.count
        case .command(let targetId, let commandType, let requestedBy, let payload):
            n += CanonicalJSON.stringCapacity(targetId) + CanonicalJSON.stringCapacity(commandType)
                + CanonicalJSON.stringCapacity(requestedBy) + payload.utf8.count
        case .metadata(let metadataType, let payload):
            n += CanonicalJSON.stringCapacity(metadataType) + payload.utf8.count
        }
        return n
    }

    /// Writes this event as ``writeJSON(into:)`` does, into `out`, which has room for
    /// ``jsonCapacity``.
    ///
    /// Written straight into bytes in a fixed key order, because query and stream answers are hot
    /// paths and every store must answer with the same bytes.
    public func writeJSON(to out: inout OutputSpan<UInt8>) {
        out.append(#"{"lane":""#)
        out.append(lane.jsonName)
        out.append(#"","scopeId":"#, string: scopeId)
        out.append(#","sourceTruthTime":""#)
        sourceTruthTime.writeRFC3339(to: &out)
        out.append(#"","canonicalTruthTime":""#)
        canonicalTruthTime.writeRFC3339(to: &out)
        out.append(#"","eventId":""#)
        eventId.writeHex(to: &out)
        out.append(UInt8(ascii: "\""))
        switch fields {
        case .raw(let connectionId, let sequence, let bytes):
            out.append(#","connectionId":"#, string: connectionId)
            out.append(#","sequence":"#)
            var digits = String(sequence)
            digits.withUTF8 { out.append(copying: UnsafeRawBufferPointer($0)) }
            out.append(#","bytes":""#)
            Base64.encode(bytes, to: &out)
            out.append(UInt8(ascii: "\""))
        case .parsed(let streamId, let streamType, let schemaVersion, let payload):
            out.append(#","streamId":"#, string: streamId)
            out.append(#","streamType":"#, string: streamType)
            out.append(#","schemaVersion":"#, string: schemaVersion)
            payload.write(to: &out)
        case .ui(let viewId, let payload):
            out.append(#","viewId":"#, string: viewId)
            payload.write(to: &out)
        case .command(let targetId, let commandType, let requestedBy, let payload):
            out.append(#","targetId":"#, string: targetId)
            out.append(#","commandType":"#, string: commandType)
            out.append(#","requestedBy":"#, string: requestedBy)
            payload.write(to: &out)
        case .metadata(let metadataType, let payload):
            out.append(#","metadataType":"#, string: metadataType)
            payload.write(to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    /// This event as one JSON object.
    public var json: String {
        var out = [UInt8]()
        writeJSON(into: &out)
        return String(decoding: out, as: UTF8.self)
    }
}

extension CanonicalPayload {
    /// Appends `,"payload":` and the payload.
    fileprivate func write(to out: inout OutputSpan<UInt8>) {
        out.append(#","payload":"#)
        utf8.withUnsafeBufferPointer { out.append(copying: UnsafeRawBufferPointer($0)) }
    }
}

extension Lane {
    /// The lane's name as a literal, for JSON.
    fileprivate var jsonName: StaticString {
        switch self {
        case .raw: "raw"
        case .parsed: "parsed"
        case .ui: "ui"
        case .command: "command"
        case .metadata: "metadata"
        }
    }
}

extension OutputSpan where Element == UInt8 {
    /// Appends a key (with the punctuation before its value) and a JSON string.
    fileprivate mutating func append(_ key: StaticString, string value: String) {
        append(key)
        CanonicalJSON.writeString(value, to: &self)
    }
}
