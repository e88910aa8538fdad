import Foundation

extension Event {
    /// Appends this event as one JSON object (no newline) in the answer form of api.md: every field,
    /// normalized times, `eventId` as hex, `bytes` as base64, `payload` as canonical JSON.
    ///
    /// Written straight into bytes in a fixed key order, because query and stream answers are hot
    /// paths and every store must answer with the same bytes.
    public func writeJSON(into out: inout [UInt8]) {
        out.append(contentsOf: #"{"lane":""#.utf8)
        out.append(contentsOf: lane.rawValue.utf8)
        out.append(contentsOf: #"","scopeId":"#.utf8)
        CanonicalJSON.writeString(scopeId, into: &out)
        out.append(contentsOf: #","sourceTruthTime":""#.utf8)
        sourceTruthTime.writeRFC3339(into: &out)
        out.append(contentsOf: #"","canonicalTruthTime":""#.utf8)
        canonicalTruthTime.writeRFC3339(into: &out)
        out.append(contentsOf: #"","eventId":""#.utf8)
        eventId.writeHex(into: &out)
        out.append(UInt8(ascii: "\""))
        func field(_ name: String, _ value: String) {
            out.append(contentsOf: #",""#.utf8)
            out.append(contentsOf: name.utf8)
            out.append(contentsOf: #"":"#.utf8)
            CanonicalJSON.writeString(value, into: &out)
        }
        func payloadField(_ payload: CanonicalPayload) {
            out.append(contentsOf: #","payload":"#.utf8)
            out.append(contentsOf: payload.utf8)
        }
        switch fields {
        case .raw(let connectionId, let sequence, let bytes):
            field("connectionId", connectionId)
            out.append(contentsOf: #","sequence":"#.utf8)
            out.append(contentsOf: String(sequence).utf8)
            out.append(contentsOf: #","bytes":""#.utf8)
            Base64.encode(bytes, into: &out)
            out.append(UInt8(ascii: "\""))
        case .parsed(let streamId, let streamType, let schemaVersion, let payload):
            field("streamId", streamId)
            field("streamType", streamType)
            field("schemaVersion", schemaVersion)
            payloadField(payload)
        case .ui(let viewId, let payload):
            field("viewId", viewId)
            payloadField(payload)
        case .command(let targetId, let commandType, let requestedBy, let payload):
            field("targetId", targetId)
            field("commandType", commandType)
            field("requestedBy", requestedBy)
            payloadField(payload)
        case .metadata(let metadataType, let payload):
            field("metadataType", metadataType)
            payloadField(payload)
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
