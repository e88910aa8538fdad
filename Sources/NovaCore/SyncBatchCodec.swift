/// The wire forms of a ``SyncBatch``. Both start with a header line of JSON:
///
///     {"nova":"syncBatch","version":2,"kind":"outbox","siteId":"…","storeId":"…","firstSeq":1,"lastSeq":5000,
///      "pendingFrom":"2026-…Z","scopePendingFrom":{"site-a":"2026-…Z"},"otherScopesPendingFrom":"2026-…Z",
///      "outboxSize":120,"count":5000}
///
/// Version 2 (`application/vnd.nova.sync.v2`, what edges send) follows it with `count` binary
/// records, integers big-endian: `seq` (int64), `canonicalTruthTime` (int64, µs since the epoch),
/// `eventId` (32 bytes), the pre-image's length (uint32) and the event's pre-image
/// (event-model.md), whose SHA-256 the id must be. The hub checks the id on the bytes as they
/// arrive and reads the fields out of the pre-image, so neither side writes or parses JSON per
/// event, and there is less to compress: measured, the JSON decoding of version 1 was half the
/// hub's time in a catch-up, and gzip of its text at the edge an eighth of the machine.
///
/// Version 1 (`application/vnd.nova.sync.v1+ndjson`, still read, so that a hub upgraded before
/// its edges keeps applying theirs) follows it with one line per event,
/// `{"seq":1,"event":{…the event in the answer form of api.md…}}`.
///
/// Either may be gzipped by the HTTP transport, which says so in `Content-Encoding`. A truncated
/// body shows as fewer events than `count`. Every event carries its `eventId` and
/// `canonicalTruthTime`, which the hub keeps unchanged. `scopePendingFrom` and
/// `otherScopesPendingFrom` (per-scope completeness) are optional: a hub that does not know them
/// ignores them, and a batch without them leaves the hub with the site-wide `pendingFrom`.
public enum SyncBatchCodec {
    /// The version edges write.
    public static let version = 2
    public static let contentType = "application/vnd.nova.sync.v2"
    public static let ndjsonContentType = "application/vnd.nova.sync.v1+ndjson"
    /// The most events one batch may hold (the `sync.batchSize` ceiling).
    public static let maxEvents = 100_000

    /// The version a media type (without parameters, any case) announces; nil for any other.
    public static func version(mediaType: String?) -> Int? {
        switch mediaType?.lowercased() {
        case contentType: 2
        case ndjsonContentType: 1
        default: nil
        }
    }

    /// How many of `events`, from the first, fit in a version 2 batch of at most `maxBytes` (its
    /// header aside); at least one, which is sent however large it is.
    public static func fitting(_ events: [CommittedEvent], maxBytes: Int) -> Int {
        var total = 0
        for (k, committed) in events.enumerated() {
            total += recordBytes(committed.event)
            if total > maxBytes { return Swift.max(1, k) }
        }
        return events.count
    }

    /// An event's record in a version 2 batch: seq, canonical time, id, length, pre-image.
    public static func recordBytes(_ event: Event) -> Int {
        8 + 8 + 32 + 4 + event.preimageLength
    }

    public static func encode(_ batch: SyncBatch, version: Int = version) -> [UInt8] {
        precondition(version == 1 || version == 2, "sync batch encoding: version 1 or 2")
        var out = [UInt8]()
        out.reserveCapacity(256 + batch.events.count * (version == 1 ? 400 : 200))
        out.append(contentsOf: #"{"nova":"syncBatch","version":\#(version),"kind":"\#(batch.kind.rawValue)","siteId":"#.utf8)
        CanonicalJSON.writeString(batch.siteId, into: &out)
        out.append(contentsOf: #","storeId":"#.utf8)
        CanonicalJSON.writeString(batch.storeId, into: &out)
        out.append(contentsOf: #","firstSeq":\#(batch.firstSeq),"lastSeq":\#(batch.lastSeq),"pendingFrom":"#.utf8)
        if let pendingFrom = batch.pendingFrom {
            out.append(UInt8(ascii: "\""))
            pendingFrom.writeRFC3339(into: &out)
            out.append(UInt8(ascii: "\""))
        } else {
            out.append(contentsOf: "null".utf8)
        }
        if let scopes = batch.scopePendingFrom, let other = batch.otherScopesPendingFrom {
            out.append(contentsOf: #","scopePendingFrom":{"#.utf8)
            for (k, scope) in scopes.keys.sorted().enumerated() {
                if k > 0 { out.append(UInt8(ascii: ",")) }
                CanonicalJSON.writeString(scope, into: &out)
                out.append(contentsOf: #":""#.utf8)
                scopes[scope]!.writeRFC3339(into: &out)
                out.append(UInt8(ascii: "\""))
            }
            out.append(contentsOf: #"},"otherScopesPendingFrom":""#.utf8)
            other.writeRFC3339(into: &out)
            out.append(UInt8(ascii: "\""))
        }
        out.append(contentsOf: #","outboxSize":\#(batch.outboxSize),"count":\#(batch.events.count)}"#.utf8)
        out.append(UInt8(ascii: "\n"))
        for committed in batch.events {
            let event = committed.event
            if version == 1 {
                out.append(contentsOf: #"{"seq":\#(committed.seq),"event":"#.utf8)
                event.writeJSON(into: &out)
                out.append(contentsOf: "}\n".utf8)
                continue
            }
            out.appendInt64(committed.seq)
            out.appendInt64(event.canonicalTruthTime.microseconds)
            event.eventId.withUnsafeBytes { out.append(contentsOf: $0) }
            let lengthAt = out.count
            out.appendUInt32(0)
            Event.writePreimage(scopeId: event.scopeId, sourceTruthTime: event.sourceTruthTime, fields: event.fields, into: &out)
            let length = UInt32(out.count - lengthAt - 4)
            for k in 0..<4 { out[lengthAt + k] = UInt8(truncatingIfNeeded: length >> UInt32(24 - 8 * k)) }
        }
        return out
    }

    /// Parses and checks a whole batch of `version` (the one its Content-Type announced); any
    /// fault rejects it whole, naming the event and the rule.
    public static func decode(_ body: UnsafeBufferPointer<UInt8>, version expected: Int = version, decoder: EventDecoder) throws(SyncBatchError) -> SyncBatch {
        let headerEnd = body.firstIndex(of: UInt8(ascii: "\n")) ?? body.count
        let headerLine = UnsafeBufferPointer(rebasing: body[0..<headerEnd])
        let rest = UnsafeBufferPointer(rebasing: body[Swift.min(body.count, headerEnd + 1)...])
        guard !headerLine.isEmpty else { throw SyncBatchError("body: empty; expected a sync batch header line") }
        let header = try object(headerLine, at: "header")
        let fields = HeaderFields(members: header)
        guard try fields.string("nova") == "syncBatch" else { throw SyncBatchError("header.nova: must be \"syncBatch\"") }
        let v = try fields.int("version")
        guard v == Int64(expected) else {
            guard v == 1 || v == 2 else {
                throw SyncBatchError("header.version: \(v) is not supported (this hub reads versions 1 and 2); upgrade the hub or the edge")
            }
            throw SyncBatchError("header.version: \(v), but the Content-Type is that of version \(expected)")
        }
        guard let kind = SyncBatch.Kind(rawValue: try fields.string("kind")) else {
            throw SyncBatchError("header.kind: must be \"outbox\", \"repair\" or \"heartbeat\"")
        }
        let siteId = try fields.string("siteId")
        let storeIdText = try fields.string("storeId")
        guard (1...256).contains(siteId.utf8.count) else { throw SyncBatchError("header.siteId: must be 1 to 256 bytes") }
        guard let storeId = SyncBatch.storeId(storeIdText) else {
            throw SyncBatchError("header.storeId: \(SyncBatch.storeIdRule), found \(quoted(storeIdText))")
        }
        let firstSeq = try fields.int("firstSeq")
        let lastSeq = try fields.int("lastSeq")
        let outboxSize = try fields.int("outboxSize")
        let count = try fields.int("count")
        var pendingFrom: Timestamp?
        if let value = fields.members.first(where: { $0.key == "pendingFrom" })?.value, value != .null {
            guard case .string(let text) = value, let time = try? Timestamp(rfc3339: text) else {
                throw SyncBatchError("header.pendingFrom: must be an RFC 3339 time or null")
            }
            pendingFrom = time
        }
        var scopePendingFrom: [String: Timestamp]?
        var otherScopesPendingFrom: Timestamp?
        if let value = fields.members.first(where: { $0.key == "scopePendingFrom" })?.value, value != .null {
            guard case .object(let members) = value, members.count <= maxEvents else {
                throw SyncBatchError("header.scopePendingFrom: must be an object of at most \(maxEvents) scopes, each with an RFC 3339 time")
            }
            var scopes = [String: Timestamp]()
            for member in members {
                guard (1...256).contains(member.key.utf8.count), case .string(let text) = member.value, let time = try? Timestamp(rfc3339: text) else {
                    throw SyncBatchError("header.scopePendingFrom: each scope (1 to 256 bytes) must map to an RFC 3339 time")
                }
                scopes[member.key] = time
            }
            guard case .string(let text)? = fields.members.first(where: { $0.key == "otherScopesPendingFrom" })?.value,
                  let other = try? Timestamp(rfc3339: text), pendingFrom != nil
            else {
                throw SyncBatchError("header.otherScopesPendingFrom: must come with scopePendingFrom and pendingFrom, as an RFC 3339 time")
            }
            scopePendingFrom = scopes
            otherScopesPendingFrom = other
        }
        if scopePendingFrom == nil, let stray = fields.members.first(where: { $0.key == "otherScopesPendingFrom" })?.value, stray != .null {
            throw SyncBatchError("header.otherScopesPendingFrom: must come with scopePendingFrom and pendingFrom, as an RFC 3339 time")
        }
        guard outboxSize >= 0 else { throw SyncBatchError("header.outboxSize: must not be negative") }
        guard (0...Int64(maxEvents)).contains(count) else { throw SyncBatchError("header.count: must be 0 to \(maxEvents)") }
        switch kind {
        case .outbox:
            guard firstSeq >= 1, firstSeq <= lastSeq, lastSeq < Int64(1) << 62 else {
                throw SyncBatchError("header.firstSeq/lastSeq: need 1 <= firstSeq <= lastSeq < 2^62, got \(firstSeq) and \(lastSeq)")
            }
            guard count > 0 else { throw SyncBatchError("header.count: an outbox batch holds at least one event") }
        case .repair:
            guard firstSeq == 0, lastSeq == 0 else { throw SyncBatchError("header.firstSeq/lastSeq: must be 0 in a repair batch") }
        case .heartbeat:
            guard firstSeq == 0, (0..<(Int64(1) << 62)).contains(lastSeq), count == 0 else {
                throw SyncBatchError("header: a heartbeat has firstSeq 0, lastSeq its ackedSeq (0 to 2^62) and no events")
            }
        }
        var events = [CommittedEvent]()
        events.reserveCapacity(Int(count))
        var previous: Int64 = kind == .outbox ? firstSeq - 1 : 0
        func checkSeq(_ seq: Int64, _ name: String) throws(SyncBatchError) {
            guard kind == .outbox else {
                guard seq == 0 else { throw SyncBatchError("\(name).seq: must be 0 in a repair batch (its events hold no outbox position), found \(seq)") }
                return
            }
            // Ascending, not consecutive: a store that took a new storeId ships again what it
            // still holds, and retention had removed some of it (acknowledged under the old id).
            // The hub's ackedSeq means "everything the edge holds up to here"; it cannot know more.
            guard seq > previous, seq <= lastSeq else {
                throw SyncBatchError("\(name).seq: \(seq) must be after \(previous) and at most lastSeq \(lastSeq) (positions ascend inside the batch)")
            }
            previous = seq
        }
        if expected == 1 {
            var lines = [UnsafeBufferPointer<UInt8>]()
            var start = 0
            for k in 0...rest.count where k == rest.count || rest[k] == UInt8(ascii: "\n") {
                if k > start { lines.append(UnsafeBufferPointer(rebasing: rest[start..<k])) }
                start = k + 1
            }
            guard count == lines.count else {
                throw SyncBatchError("body: the header announces \(count) events but \(lines.count) follow (a truncated or padded batch)")
            }
            for (k, line) in lines.enumerated() {
                let name = "events[\(k)]"
                let members = try object(line, at: name)
                guard members.count == 2, case .number(let n)? = members.first(where: { $0.key == "seq" })?.value, n.isIntegerLiteral, let seq = n.int64,
                      let value = members.first(where: { $0.key == "event" })?.value
                else { throw SyncBatchError("\(name): must be {\"seq\": n, \"event\": {…}}") }
                try checkSeq(seq, name)
                guard value["eventId"] != nil, value["canonicalTruthTime"] != nil
                else { throw SyncBatchError("\(name).event: must be an event object carrying its eventId and canonicalTruthTime") }
                switch decoder.decode(value, receivedAt: .now()) {
                case .success(let event): events.append(CommittedEvent(seq: seq, event: event))
                case .failure(let error): throw SyncBatchError(event: name, error)
                }
            }
        } else {
            let raw = UnsafeRawBufferPointer(rest)
            var at = 0
            for k in 0..<Int(count) {
                let name = "events[\(k)]"
                guard raw.count - at >= 52 else {
                    throw SyncBatchError("\(name): the body ends inside it, after \(k) of the \(count) events the header announces (a truncated batch)")
                }
                func int64(_ offset: Int) -> Int64 { Int64(bigEndian: raw.loadUnaligned(fromByteOffset: at + offset, as: Int64.self)) }
                let (seq, canonical) = (int64(0), int64(8))
                let eventId = EventID(bytes: UnsafeRawBufferPointer(rebasing: raw[at + 16..<at + 48]))!
                let length = Int(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: at + 48, as: UInt32.self)))
                at += 52
                guard length <= raw.count - at else {
                    throw SyncBatchError("\(name): its pre-image of \(length) bytes runs past the body's end (a truncated batch)")
                }
                try checkSeq(seq, name)
                do {
                    let event = try decoder.decode(preimage: UnsafeRawBufferPointer(rebasing: raw[at..<at + length]), eventId: eventId, canonicalTruthTime: canonical)
                    events.append(CommittedEvent(seq: seq, event: event))
                } catch {
                    throw SyncBatchError(event: name, error)
                }
                at += length
            }
            guard at == raw.count else {
                throw SyncBatchError("body: \(raw.count - at) bytes follow the \(count) events the header announces (a padded or corrupt batch)")
            }
        }
        if kind == .outbox, previous != lastSeq {
            throw SyncBatchError("header.lastSeq: \(lastSeq) but the last event is at \(previous) (a batch ends with its last event)")
        }
        var batch = SyncBatch(
            kind: kind, siteId: siteId, storeId: storeId, firstSeq: firstSeq, lastSeq: lastSeq, pendingFrom: pendingFrom, outboxSize: outboxSize,
            events: events)
        batch.scopePendingFrom = scopePendingFrom
        batch.otherScopesPendingFrom = otherScopesPendingFrom
        return batch
    }

    private static func object(_ line: UnsafeBufferPointer<UInt8>, at name: String) throws(SyncBatchError) -> [JSONMember] {
        let value: JSONValue
        do {
            value = try JSONParser.parse(line)
        } catch {
            throw SyncBatchError("\(name): \(error.description)")
        }
        guard case .object(let members) = value else { throw SyncBatchError("\(name): must be a JSON object, found \(value.typeName)") }
        return members
    }

    private struct HeaderFields {
        var members: [JSONMember]

        func value(_ name: String) throws(SyncBatchError) -> JSONValue {
            guard let value = members.first(where: { $0.key == name })?.value else { throw SyncBatchError("header.\(name): required") }
            return value
        }

        func string(_ name: String) throws(SyncBatchError) -> String {
            guard case .string(let s) = try value(name) else { throw SyncBatchError("header.\(name): must be a string") }
            return s
        }

        func int(_ name: String) throws(SyncBatchError) -> Int64 {
            guard case .number(let n) = try value(name), n.isIntegerLiteral, let v = n.int64 else { throw SyncBatchError("header.\(name): must be an integer") }
            return v
        }
    }
}

/// A sync batch that cannot be applied, with the field and the rule; nothing of it is applied.
public struct SyncBatchError: Error, Sendable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    init(event name: String, _ error: EventValidationError) {
        self.message = error.field.map { "\(name).event.\($0): \(error.rule)" } ?? "\(name).event: \(error.rule)"
    }

    public var description: String { message }
}
