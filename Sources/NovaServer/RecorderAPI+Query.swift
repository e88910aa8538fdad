import HTTPTypes
import Prometheus
import Hummingbird
import NovaCore

extension RecorderAPI {
    /// `GET /v1/events`: one page of an ordered query as NDJSON, with `Nova-Next-Cursor` when
    /// more events follow.
    func query(_ request: Request) async throws -> Response {
        var parameters = try QueryParameters(request.uri)
        var query = try EventQuery(
            parameters: &parameters, maxLimit: configuration.server.maxQueryLimit,
            maxRange: configuration.server.maxQueryRange.map { ($0, NovaConfiguration.parseInterval($0)!) })
        query.maxBytes = configuration.server.maxPageBytes
        let started = ContinuousClock.now
        let page: EventPage
        do {
            page = try await store.page(query)
        } catch {
            throw APIError.store(error)
        }
        metrics.queryDuration.record(ContinuousClock.now - started)
        var headers: HTTPFields = [.contentType: "application/x-ndjson"]
        if let next = page.next {
            headers[.novaNextCursor] = Cursor.encode(next, for: query)
        }
        if let complete = await completeThrough.value(store, scope: query.scopeId) {
            headers[.novaCompleteThrough] = complete.rfc3339
        }
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: Self.ndjson(page.events)))
    }

    /// `events` as NDJSON, written straight into the answer's buffer (through an array, copying
    /// the answer into its buffer was 1% of the hub's query time in perf).
    static func ndjson(_ events: [Event]) -> ByteBuffer {
        // Through a buffer pointer, whose elements are borrowed: a for-in loop, or the array's
        // subscript, copies each event out (a retain and release per field, ~1% in perf).
        events.withUnsafeBufferPointer { events in
            var capacity = 0
            for k in events.indices { capacity += events[k].jsonCapacity + 1 }
            var buffer = ByteBufferAllocator().buffer(capacity: capacity)
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: capacity) { raw in
                let room = raw.bindMemory(to: UInt8.self)
                var out = OutputSpan(buffer: room, initializedCount: 0)
                for k in events.indices {
                    events[k].writeJSON(to: &out)
                    out.append(UInt8(ascii: "\n"))
                }
                return out.finalize(for: room)
            }
            return buffer
        }
    }

    /// `GET /v1/stats`: per scope and lane, the count and the first and last times; the store size.
    func stats(_ request: Request) async throws -> Response {
        try QueryParameters(request.uri).finish()
        let stats: StoreStats
        do {
            stats = try await store.stats()
        } catch {
            throw APIError.store(error)
        }
        var out = [UInt8]()
        out.append(contentsOf: #"{"lanes":["#.utf8)
        for (k, s) in stats.lanes.enumerated() {
            if k > 0 { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: #"{"scopeId":"#.utf8)
            CanonicalJSON.writeString(s.scopeId, into: &out)
            out.append(contentsOf: """
                ,"lane":"\(s.lane)","count":\(s.count),\
                "firstCanonicalTruthTime":"\(s.firstCanonicalTruthTime)","lastCanonicalTruthTime":"\(s.lastCanonicalTruthTime)",\
                "firstSourceTruthTime":"\(s.firstSourceTruthTime)","lastSourceTruthTime":"\(s.lastSourceTruthTime)"}
                """.utf8)
        }
        out.append(contentsOf: #"],"totalEvents":\#(stats.totalEvents),"storeBytes":\#(stats.storeBytes)}"#.utf8)
        return jsonResponse(String(decoding: out, as: UTF8.self))
    }
}

extension HTTPField.Name {
    /// The cursor of the next page (api.md).
    public static let novaNextCursor = HTTPField.Name("Nova-Next-Cursor")!
    /// At a hub: every site's data is here up to this time (sync.md, `completeThrough`).
    public static let novaCompleteThrough = HTTPField.Name("Nova-Complete-Through")!
}
