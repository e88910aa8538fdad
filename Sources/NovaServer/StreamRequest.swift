import Hummingbird
import HummingbirdCore
import NovaCore

/// What a client asked for when it opened `GET /v1/stream` (api.md, Streaming).
struct StreamRequest: Sendable {
    enum Mode: String, Sendable {
        case live, rewind
    }

    var scopeId: String
    var timebase: Timebase
    var lanes: [Lane]
    var filters: [Lane: String]
    var mode: Mode
    /// Rewind only: where to start (required) and, optionally, where to end.
    var from: Timestamp
    var to: Timestamp?
    /// 1 = real time, 2 = twice as fast, 0 = as fast as the client reads.
    var speed: Double

    static let maxSpeed = 1_000_000.0

    init(_ uri: URI) throws(APIError) {
        var p = try QueryParameters(uri)
        scopeId = try p.scope()
        (timebase, lanes, filters) = try p.selection()
        switch p.string("mode") {
        case nil, "live": mode = .live
        case "rewind": mode = .rewind
        case let other?: throw APIError(.badRequest, "mode: must be live or rewind, found \(quotedParameter(other))")
        }
        if mode == .rewind {
            from = try p.time("from")
            to = nil
            if p.string("to") != nil { to = try p.time("to") }
            if let to, from > to { throw APIError(.badRequest, "from: must not be after to") }
            speed = try Self.speed(p.string("speed") ?? "1", field: "speed")
        } else {
            for name in ["from", "to", "speed"] where p.string(name) != nil {
                throw APIError(.badRequest, "\(name): only for mode=rewind (a live stream starts at the newest commit)")
            }
            from = .min
            speed = 0
        }
        try p.finish()
    }

    static func speed(_ text: String, field: String) throws(APIError) -> Double {
        guard let value = Double(text), value.isFinite, value >= 0, value <= maxSpeed else {
            throw APIError(.badRequest, "\(field): must be a number from 0 to \(Int(maxSpeed)) (0 = as fast as the client reads), found \(quotedParameter(text))")
        }
        return value
    }

    /// Every lane, no filter: the stream takes every event of its scope (``CommitFeed``'s frames).
    var takesWholeScope: Bool { filters.isEmpty && Lane.allCases.allSatisfy(lanes.contains) }

    /// Whether a committed event belongs to this stream (scope, lanes, filters; not time).
    func selects(_ event: Event) -> Bool {
        guard event.scopeId == scopeId, lanes.contains(event.lane) else { return false }
        guard let wanted = filters[event.lane] else { return true }
        return event.fields.filterValue == wanted
    }

    /// Whether an event orders before `to` (always, without one): what a rewind with `to` that
    /// runs on as LIVE still sends.
    func endsAfter(_ event: Event) -> Bool {
        guard let to else { return true }
        return event.time(timebase) < to
    }

    /// Whether the rewind's `to` is behind the clock: its range may be read like a paged query.
    var toHasPassed: Bool {
        guard let to else { return false }
        return Timestamp.now() >= to
    }

    /// The rewind's ordered read from `from`, after `cursor`: of what was committed by `snapshot`
    /// while the rewind is to hand over to LIVE; without a snapshot, like a paged query.
    func query(from: Timestamp, after cursor: OrderingKey?, snapshot: Int64?, limit: Int, maxBytes: Int) -> EventQuery {
        let end = to ?? .endOfTime
        return EventQuery(
            scopeId: scopeId, range: Swift.min(from, end)..<end, timebase: timebase, lanes: lanes, filters: filters,
            limit: limit, after: cursor, throughSeq: snapshot, maxBytes: maxBytes)
    }
}

/// A message from a streaming client.
enum StreamCommand: Sendable, Equatable {
    case pause
    case resume
    case seek(Timestamp)
    case speed(Double)

    /// Parses one text message, naming the member and the rule it breaks.
    init(parsing text: String) throws(APIError) {
        let value: JSONValue
        do {
            value = try JSONParser.parse(text)
        } catch {
            throw APIError(.badRequest, "message: \(error.description)")
        }
        guard case .object(let members) = value else { throw APIError(.badRequest, "message: must be a JSON object") }
        guard case .string(let type)? = value["type"] else { throw APIError(.badRequest, "type: required, a string") }
        let allowed: Set<String>
        switch type {
        case "pause":
            self = .pause
            allowed = ["type"]
        case "resume":
            self = .resume
            allowed = ["type"]
        case "seek":
            guard case .string(let to)? = value["to"] else { throw APIError(.badRequest, "to: required for seek, an RFC 3339 time") }
            do {
                self = .seek(try Timestamp(rfc3339: to))
            } catch {
                throw APIError(.badRequest, "to: \(error.description)")
            }
            allowed = ["type", "to"]
        case "speed":
            guard case .number(let n)? = value["value"] else { throw APIError(.badRequest, "value: required for speed, a number") }
            self = .speed(try StreamRequest.speed("\(n.double)", field: "value"))
            allowed = ["type", "value"]
        default:
            throw APIError(.badRequest, "type: must be pause, resume, seek or speed, found \(quotedParameter(type))")
        }
        if let stray = members.first(where: { !allowed.contains($0.key) }) {
            throw APIError(.badRequest, "\(quotedParameter(stray.key)): unknown member of a \(type) message")
        }
    }
}
