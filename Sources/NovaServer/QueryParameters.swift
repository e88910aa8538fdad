import Foundation
import HummingbirdCore
import Hummingbird
import NovaCore

/// The query string of a request, read parameter by parameter: a missing, repeated, malformed or
/// unknown parameter is a 400 that names it.
struct QueryParameters {
    /// In the order given, with whether a reader asked for each. A handful per request: searched
    /// in place, they cost less than hashing each name into a dictionary and a set (about 2% of
    /// the hub's query CPU in perf).
    private var parameters: [(name: String, value: String, used: Bool)] = []
    static let maxCount = 32

    /// Decoded here, strictly: Hummingbird's decoding keeps a bad escape (`%zz`) as it is and
    /// turns bytes that are not UTF-8 into something else, so such a scope matched nothing and the
    /// query answered an empty 200 instead of saying what was wrong.
    init(_ uri: URI) throws(APIError) {
        guard let query = uri.query else { return }
        // Split on the bytes: splitting the String walked it Character by Character (grapheme
        // breaking), 2-3% of a small query's time in perf; the separators are ASCII either way.
        for pair in query.utf8.split(separator: UInt8(ascii: "&")) {
            let equals = pair.firstIndex(of: UInt8(ascii: "="))
            let k = try Self.decode(Substring(pair[..<(equals ?? pair.endIndex)]), of: nil)
            var value = ""
            if let equals { value = try Self.decode(Substring(pair[pair.index(after: equals)...]), of: k) }
            guard !parameters.contains(where: { $0.name == k }) else { throw APIError(.badRequest, "\(k): given more than once") }
            // No request takes more; the bound keeps the searches above short.
            guard parameters.count < Self.maxCount else {
                throw APIError(.badRequest, "query string: at most \(Self.maxCount) parameters (no request takes more)")
            }
            parameters.append((k, value, false))
        }
    }

    /// A percent-encoded key, value or path segment (RFC 3986), strictly: escapes of two hex
    /// digits, UTF-8 once decoded, no NUL (which no field of an event may hold).
    static func decode(_ text: Substring, of name: String?) throws(APIError) -> String {
        let what = name ?? "a parameter name"
        // Most values have no escape; Foundation's decoding was 1% of a query's time in perf.
        guard text.utf8.contains(UInt8(ascii: "%")) else {
            guard !text.utf8.contains(0) else { throw APIError(.badRequest, "\(what): must not contain NUL") }
            return String(text)
        }
        guard let decoded = String(text).removingPercentEncoding else {
            throw APIError(.badRequest, "\(what): not valid percent-encoding (a \"%\" takes two hex digits, and the bytes must be UTF-8)")
        }
        guard !decoded.utf8.contains(0) else { throw APIError(.badRequest, "\(what): must not contain NUL") }
        return decoded
    }

    mutating func string(_ name: String) -> String? {
        guard let k = parameters.firstIndex(where: { $0.name == name }) else { return nil }
        parameters[k].used = true
        return parameters[k].value
    }

    mutating func required(_ name: String) throws(APIError) -> String {
        guard let v = string(name), !v.isEmpty else { throw APIError(.badRequest, "\(name): required") }
        return v
    }

    /// `scope`: required, and a scopeId by the rules of event-model.md (1 to 256 bytes of UTF-8),
    /// so that one no event can have is refused rather than answered with nothing.
    mutating func scope() throws(APIError) -> String {
        let scope = try required("scope")
        guard scope.utf8.count <= 256 else { throw APIError(.badRequest, "scope: must be at most 256 bytes of UTF-8, found \(scope.utf8.count)") }
        return scope
    }

    mutating func time(_ name: String) throws(APIError) -> Timestamp {
        let text = try required(name)
        do {
            return try Timestamp(rfc3339: text)
        } catch {
            throw APIError(.badRequest, "\(name): \(error.description)")
        }
    }

    mutating func int(_ name: String, default def: Int, in range: ClosedRange<Int>) throws(APIError) -> Int {
        guard let text = string(name) else { return def }
        guard let n = Int(text), range.contains(n) else {
            throw APIError(.badRequest, "\(name): must be an integer from \(range.lowerBound) to \(range.upperBound), found \(quotedParameter(text))")
        }
        return n
    }

    mutating func bool(_ name: String) throws(APIError) -> Bool {
        switch string(name) {
        case nil, "false": return false
        case "true": return true
        case let other?: throw APIError(.badRequest, "\(name): must be true or false, found \(quotedParameter(other))")
        }
    }

    /// Rejects any parameter that no reader asked for.
    func finish() throws(APIError) {
        if let unknown = parameters.filter({ !$0.used }).map(\.name).sorted().first {
            throw APIError(.badRequest, "\(quotedParameter(unknown)): unknown parameter")
        }
    }
}

extension QueryParameters {
    /// `timebase`, `lane` and the per-lane filters, shared by queries and streams.
    mutating func selection() throws(APIError) -> (Timebase, [Lane], [Lane: String]) {
        let timebase: Timebase
        switch string("timebase") {
        case nil, "canonical": timebase = .canonical
        case "source": timebase = .source
        case let other?: throw APIError(.badRequest, "timebase: must be canonical or source, found \(quotedParameter(other))")
        }
        var filters = [Lane: String]()
        for lane in Lane.allCases {
            guard let value = string(lane.filterField) else { continue }
            guard value.utf8.count <= 256 else {
                throw APIError(.badRequest, "\(lane.filterField): must be at most 256 bytes of UTF-8, found \(value.utf8.count)")
            }
            filters[lane] = value
        }
        var lanes = filters.isEmpty ? Lane.allCases : filters.keys.sorted()
        if let list = string("lane") {
            switch Lane.parseList(list) {
            case .success(let parsed): lanes = parsed
            case .failure(let error): throw APIError(.badRequest, "lane: \(error.description)")
            }
            if let stray = filters.keys.sorted().first(where: { !lanes.contains($0) }) {
                throw APIError(.badRequest, "\(stray.filterField): filters the \(stray) lane, which the lane parameter does not select")
            }
        }
        return (timebase, lanes, filters)
    }
}

/// A parameter value quoted for a message, cut short.
func quotedParameter(_ text: String) -> String {
    let cut = text.count > 64 ? String(text.prefix(64)) + "…" : text
    var out = [UInt8]()
    CanonicalJSON.writeString(cut, into: &out)
    return String(decoding: out, as: UTF8.self)
}

extension EventQuery {
    /// `GET /v1/events` parameters (api.md): `scope`, `from`, `to`, `timebase`, `lane`, the per-lane
    /// filters, `limit`, `after`.
    ///
    /// A filter narrows the lane that owns its field. Without `lane`, the lanes are those named by
    /// the filters given (all five when none); with `lane`, a filter on a lane not selected is an
    /// error rather than silently ignored.
    init(parameters p: inout QueryParameters, maxLimit: Int, maxRange: (text: String, duration: Duration)? = nil) throws(APIError) {
        let scope = try p.scope()
        let from = try p.time("from")
        let to = try p.time("to")
        guard from <= to else { throw APIError(.badRequest, "from: must not be after to") }
        if let maxRange, Duration.microseconds(to.microseconds - from.microseconds) > maxRange.duration {
            throw APIError(.badRequest, "to: the range from..to may span at most \(maxRange.text) (server.maxQueryRange); page through shorter ranges")
        }
        let (timebase, lanes, filters) = try p.selection()
        let limit = try p.int("limit", default: Swift.min(10_000, maxLimit), in: 1...maxLimit)
        self.init(scopeId: scope, range: from..<to, timebase: timebase, lanes: lanes, filters: filters, limit: limit)
        if let cursor = p.string("after") {
            do {
                after = try Cursor.decode(cursor, for: self)
            } catch {
                throw APIError(.badRequest, "after: \(error.description)")
            }
        }
        try p.finish()
    }
}
