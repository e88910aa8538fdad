/// The wire form of a ``SyncBatch``, version 1 (`application/vnd.nova.sync.v1+ndjson`; the HTTP
/// transport may gzip it and says so in `Content-Encoding`):
///
///     {"nova":"syncBatch","version":1,"kind":"outbox","siteId":"…","storeId":"…","firstSeq":1,"lastSeq":5000,
///      "pendingFrom":"2026-…Z","scopePendingFrom":{"site-a":"2026-…Z"},"otherScopesPendingFrom":"2026-…Z",
///      "outboxSize":120,"count":5000}
///     {"seq":1,"event":{…the event in the answer form of api.md…}}
///     …
///
/// A header line, then one line per event. NDJSON because the events' answer form is already
/// written and parsed by the hot paths of the API, and a truncated body shows as a `count` that
/// does not match. Every event carries its `eventId` and `canonicalTruthTime`, which the hub
/// keeps unchanged; the id is checked against the content like any ingest. `scopePendingFrom` and
/// `otherScopesPendingFrom` (per-scope completeness) are optional: a hub that does not know them
/// ignores them, and a batch without them leaves the hub with the site-wide `pendingFrom`.
public enum SyncBatchCodec {
    public static let version = 1
    public static let contentType = "application/vnd.nova.sync.v1+ndjson"
    /// The most events one batch may hold (the `sync.batchSize` ceiling).
    public static let maxEvents = 100_000

    public static func encode(_ batch: SyncBatch) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(256 + batch.events.count * 400)
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
            out.append(contentsOf: #"{"seq":\#(committed.seq),"event":"#.utf8)
            committed.event.writeJSON(into: &out)
            out.append(contentsOf: "}\n".utf8)
        }
        return out
    }

    /// Parses and checks a whole batch; any fault rejects it whole, naming the line and the rule.
    public static func decode(_ body: UnsafeBufferPointer<UInt8>, decoder: EventDecoder) throws(SyncBatchError) -> SyncBatch {
        var lines = [UnsafeBufferPointer<UInt8>]()
        var start = 0
        for k in 0...body.count where k == body.count || body[k] == UInt8(ascii: "\n") {
            if k > start { lines.append(UnsafeBufferPointer(rebasing: body[start..<k])) }
            start = k + 1
        }
        guard let headerLine = lines.first else { throw SyncBatchError("body: empty; expected a sync batch header line") }
        let header = try object(headerLine, at: "header")
        let fields = HeaderFields(members: header)
        guard try fields.string("nova") == "syncBatch" else { throw SyncBatchError("header.nova: must be \"syncBatch\"") }
        let v = try fields.int("version")
        guard v == Int64(version) else {
            throw SyncBatchError("header.version: \(v) is not supported (this hub reads version \(version)); upgrade the hub or the edge")
        }
        guard let kind = SyncBatch.Kind(rawValue: try fields.string("kind")) else {
            throw SyncBatchError("header.kind: must be \"outbox\", \"repair\" or \"heartbeat\"")
        }
        let siteId = try fields.string("siteId")
        let storeId = try fields.string("storeId")
        guard (1...256).contains(siteId.utf8.count) else { throw SyncBatchError("header.siteId: must be 1 to 256 bytes") }
        guard (1...256).contains(storeId.utf8.count) else { throw SyncBatchError("header.storeId: must be 1 to 256 bytes") }
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
        guard outboxSize >= 0 else { throw SyncBatchError("header.outboxSize: must not be negative") }
        guard (0...Int64(maxEvents)).contains(count) else { throw SyncBatchError("header.count: must be 0 to \(maxEvents)") }
        guard count == lines.count - 1 else {
            throw SyncBatchError("body: the header announces \(count) events but \(lines.count - 1) follow (a truncated or padded batch)")
        }
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
        for (k, line) in lines.dropFirst().enumerated() {
            let name = "events[\(k)]"
            let members = try object(line, at: name)
            guard members.count == 2, case .number(let n)? = members.first(where: { $0.key == "seq" })?.value, n.isIntegerLiteral, let seq = n.int64,
                  let value = members.first(where: { $0.key == "event" })?.value
            else { throw SyncBatchError("\(name): must be {\"seq\": n, \"event\": {…}}") }
            if kind == .outbox {
                guard seq > previous, seq <= lastSeq else {
                    throw SyncBatchError("\(name).seq: \(seq) must be after \(previous) and at most lastSeq \(lastSeq) (positions ascend inside the batch)")
                }
                previous = seq
            }
            guard value["eventId"] != nil, value["canonicalTruthTime"] != nil
            else { throw SyncBatchError("\(name).event: must be an event object carrying its eventId and canonicalTruthTime") }
            switch decoder.decode(value, receivedAt: .now()) {
            case .success(let event): events.append(CommittedEvent(seq: seq, event: event))
            case .failure(let error): throw SyncBatchError("\(name).event.\(error.description)")
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

    public var description: String { message }
}
