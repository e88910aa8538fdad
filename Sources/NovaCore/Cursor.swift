import Crypto

/// Keyset page cursors, opaque to clients.
///
/// A cursor carries the ordering key of the last event served and a fingerprint of the query's
/// shape (scope, timebase, lanes, filters), sealed by a checksum. A cursor that is garbled, forged
/// by hand, or taken from a different query decodes to an error that names the rule, never to a
/// crash or a database error. Cursors do not depend on the store, so a client may resume a query
/// against another store holding the same events.
public enum Cursor {
    private static let version: UInt8 = 1
    private static let domain = Array("nova.cursor.v1".utf8)

    public struct DecodingError: Error, Sendable, CustomStringConvertible {
        public var rule: String
        public var description: String { rule }
    }

    public static func encode(_ key: OrderingKey, for query: EventQuery) -> String {
        var body: [UInt8] = [version]
        body.append(contentsOf: fingerprint(query))
        body.appendInt64(key.time.microseconds)
        body.append(UInt8(key.lane.rank))
        body.appendInt64(key.sequence)
        body.append(contentsOf: key.eventId.bytes)
        body.appendString(key.connectionId)
        body.append(contentsOf: checksum(body))
        return Base64.encodeURL(body)
    }

    public static func decode(_ text: String, for query: EventQuery) throws(DecodingError) -> OrderingKey {
        let invalid = DecodingError(rule: "not a cursor issued by this API (garbled or forged)")
        guard text.utf8.count <= 1024, text.utf8.allSatisfy({ isBase64URL($0) }) else { throw invalid }
        guard let bytes = Base64.decodeURL(text) else { throw invalid }
        // version 1 + fingerprint 8 + time 8 + lane 1 + sequence 8 + id 32 + length 4 + checksum 8
        guard bytes.count >= 70, bytes[0] == version else { throw invalid }
        let body = Array(bytes[..<(bytes.count - 8)])
        guard checksum(body) == Array(bytes[(bytes.count - 8)...]) else { throw invalid }
        guard Array(body[1..<9]) == fingerprint(query) else {
            throw DecodingError(rule: "belongs to a different query (scope, timebase, lanes and filters must not change between pages)")
        }
        var i = 9
        func int64() -> Int64 {
            var u: UInt64 = 0
            for _ in 0..<8 {
                u = u << 8 | UInt64(body[i])
                i += 1
            }
            return Int64(bitPattern: u)
        }
        let time = Timestamp(microseconds: int64())
        let rank = Int(body[i])
        i += 1
        let sequence = int64()
        let eventId = EventID(bytes: body[i..<(i + 32)])!
        i += 32
        let length = Int(body[i]) << 24 | Int(body[i + 1]) << 16 | Int(body[i + 2]) << 8 | Int(body[i + 3])
        i += 4
        guard length == body.count - i, let connectionId = String(validating: body[i...], as: UTF8.self),
              rank < Lane.allCases.count, time.isInContractRange
        else { throw invalid }
        let lane = Lane.allCases[rank]
        guard query.lanes.contains(lane) else { throw invalid }
        return OrderingKey(time: time, lane: lane, connectionId: connectionId, sequence: sequence, eventId: eventId)
    }

    private static func isBase64URL(_ c: UInt8) -> Bool {
        (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 45 || c == 95
    }

    private static func checksum(_ body: [UInt8]) -> [UInt8] {
        Array(SHA256.hash(data: domain + body).prefix(8))
    }

    private static func fingerprint(_ query: EventQuery) -> [UInt8] {
        var shape = [UInt8]()
        shape.appendString(query.scopeId)
        shape.appendString(query.timebase.rawValue)
        for lane in query.lanes {
            shape.appendString(lane.rawValue)
            shape.appendString(query.filters[lane] ?? "")
            shape.append(query.filters[lane] == nil ? 0 : 1)
        }
        return Array(SHA256.hash(data: shape).prefix(8))
    }
}
