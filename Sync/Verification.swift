import Foundation
import NIOHTTP1
import NovaCore

/// One side of a comparison: a store opened directly, or a server reached over HTTP.
public struct DigestSide: Sendable {
    public var name: String
    public var digests: @Sendable (DigestRequest) async throws -> [BucketDigest]
    public var stats: @Sendable () async throws -> StoreStats

    public init(name: String, digests: @escaping @Sendable (DigestRequest) async throws -> [BucketDigest], stats: @escaping @Sendable () async throws -> StoreStats) {
        self.name = name
        self.digests = digests
        self.stats = stats
    }

    public init(store: any EventStore, name: String) {
        self.init(name: name, digests: { try await store.digests($0) }, stats: { try await store.stats() })
    }

    public init(client: SyncClient) {
        self.init(name: client.upstream, digests: { try await client.digests($0) }, stats: { try await client.stats() })
    }
}

/// `nova verify` (sync.md, Verification): bucket digests of two stores compared scope by scope,
/// in windows of a bounded number of buckets so that memory stays flat and progress shows.
public struct Verification: Sendable {
    public var scopes: [String]?
    public var range: Range<Timestamp>?
    public var timebase: Timebase = .canonical
    public var lanes: [Lane] = Lane.allCases
    public var bucketMicros: Int64 = 60_000_000
    /// Buckets per digest request.
    public var bucketsPerWindow: Int64 = 10_000
    /// Compare nothing at or after this time (a source still being written).
    public var clipEnd: Timestamp?

    public init() {}

    public struct ScopeResult: Sendable {
        public var scopeId: String
        public var range: Range<Timestamp>
        public var leftEvents: Int64
        public var rightEvents: Int64
        public var buckets: Int
        public var differences: [DigestDifference]
        /// False when neither side holds any event of the scope, in any range: most likely a
        /// misspelled `--scope`, which must not pass for "equal".
        public var heldByEither = true
    }

    public func run(_ a: DigestSide, _ b: DigestSide, progress: (String) -> Void = { _ in }) async throws -> [ScopeResult] {
        let (sa, sb) = (try await a.stats(), try await b.stats())
        let known = Set(sa.lanes.map(\.scopeId)).union(sb.lanes.map(\.scopeId))
        let scopes = self.scopes ?? known.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        var results = [ScopeResult]()
        for (k, scope) in scopes.enumerated() {
            guard var range = range ?? Self.span(of: scope, in: [sa, sb], timebase: timebase) else {
                results.append(ScopeResult(scopeId: scope, range: Timestamp.min..<Timestamp.min, leftEvents: 0, rightEvents: 0, buckets: 0, differences: [], heldByEither: false))
                continue
            }
            if let clipEnd { range = range.lowerBound..<Swift.max(range.lowerBound, Swift.min(range.upperBound, clipEnd)) }
            var result = ScopeResult(scopeId: scope, range: range, leftEvents: 0, rightEvents: 0, buckets: 0, differences: [], heldByEither: known.contains(scope))
            let base = Self.saturatingProduct(bucketMicros, bucketsPerWindow)
            // Windows widen (up to `maxWidening` times) over stretches where neither side holds
            // anything: the cost follows the events, not the span. One event in 1970 and one in
            // 9999 took 34 s at 1-hour buckets, and would have taken 40 minutes at 1-minute ones.
            // A widened window is only a probe, in buckets a normal window wide (a few hundred at
            // most, whatever it holds); where it finds events, the comparison goes on from the
            // first of them at the normal width.
            var widening: Int64 = 1
            var start = DigestRequest.bucketStart(range.lowerBound.microseconds, width: bucketMicros)
            while start < range.upperBound.microseconds {
                let width = Self.saturatingProduct(base, widening)
                let end = start > range.upperBound.microseconds - width ? range.upperBound.microseconds : start + width
                let window = Swift.max(start, range.lowerBound.microseconds)
                let probing = widening > 1
                let request = DigestRequest(
                    scopeId: scope, range: Timestamp(microseconds: window)..<Timestamp(microseconds: end), timebase: timebase, lanes: lanes,
                    bucketMicros: probing ? Swift.min(base, DigestRequest.maxBucketMicros) : bucketMicros)
                async let left = a.digests(request)
                async let right = b.digests(request)
                let (l, r) = try await (left, right)
                if probing, let first = (l + r).map(\.bucketStart).min() {
                    widening = 1
                    start = Swift.max(start, DigestRequest.bucketStart(first.microseconds, width: bucketMicros))
                    continue
                }
                if probing {
                    start = end
                    widening = Swift.min(widening * 2, Self.maxWidening)
                    continue
                }
                if l.isEmpty && r.isEmpty { widening = 2 }
                result.leftEvents += l.reduce(0) { $0 + $1.count }
                result.rightEvents += r.reduce(0) { $0 + $1.count }
                result.buckets += Set(l.map(\.bucketStart) + r.map(\.bucketStart)).count
                result.differences += DigestDifference.compare(l, r)
                let done = Double(end - range.lowerBound.microseconds) / Double(Swift.max(1, range.upperBound.microseconds - range.lowerBound.microseconds))
                progress("scope \(k + 1)/\(scopes.count) \(scope): \(Int(done * 100))%, \(result.leftEvents) events, \(result.differences.count) differing buckets")
                start = end
            }
            results.append(result)
        }
        return results
    }

    /// How many normal windows an empty stretch's window may span.
    static let maxWidening: Int64 = 256

    /// `a × b`, or a width beyond any time span when that overflows (a bucket of 100,000 days
    /// times the window's buckets did, and crashed).
    static func saturatingProduct(_ a: Int64, _ b: Int64) -> Int64 {
        let (product, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? Int64.max / 4 : product
    }

    /// The time span a scope covers on either side, on `timebase` (end exclusive).
    static func span(of scope: String, in stats: [StoreStats], timebase: Timebase) -> Range<Timestamp>? {
        let lanes = stats.flatMap(\.lanes).filter { $0.scopeId == scope }
        guard !lanes.isEmpty else { return nil }
        let first = lanes.map { timebase == .canonical ? $0.firstCanonicalTruthTime : $0.firstSourceTruthTime }.min()!
        let last = lanes.map { timebase == .canonical ? $0.lastCanonicalTruthTime : $0.lastSourceTruthTime }.max()!
        return first..<Timestamp(microseconds: last.microseconds + 1)
    }
}

extension SyncClient {
    /// `GET /v1/stats` of the server.
    public func stats() async throws(Failure) -> StoreStats {
        let (status, body, _) = try await request(.GET, "/v1/stats")
        guard status == 200 else { throw failure(status, body) }
        do {
            return try JSONDecoder().decode(StoreStats.self, from: Data(body))
        } catch {
            throw Failure(status: status, message: "\(upstream): the stats answer is malformed (\(error))")
        }
    }
}

/// `nova sync repair` (and dual mode's drift repair): re-sends, as repair batches, the edge's
/// events of every bucket where the other side differs (sync.md). Idempotent: the receiver
/// dedupes what it already holds.
public struct Repair: Sendable {
    public var siteId: String
    public var batchSize: Int
    /// The most bytes of events per batch (`sync.maxBatchBytes`), so large events still fit the
    /// receiver's body limit.
    public var maxBatchBytes: Int

    public init(siteId: String, batchSize: Int, maxBatchBytes: Int = 8 << 20) {
        self.siteId = siteId
        self.batchSize = batchSize
        self.maxBatchBytes = maxBatchBytes
    }

    /// Returns how many events were re-sent; `deliver` applies one batch or throws.
    public func run(
        _ results: [Verification.ScopeResult], edge: any EventStore, timebase: Timebase, bucketMicros: Int64,
        deliver: (SyncBatch) async throws -> Void, progress: (String) -> Void = { _ in }
    ) async throws -> Int {
        let storeId = try await edge.outboxState().storeId
        var sent = 0
        var pending = [CommittedEvent]()
        var pendingBytes = 0
        func flush() async throws {
            guard !pending.isEmpty else { return }
            let batch = SyncBatch(kind: .repair, siteId: siteId, storeId: storeId, firstSeq: 0, lastSeq: 0, pendingFrom: nil, outboxSize: 0, events: pending)
            try await deliver(batch)
            sent += pending.count
            pending.removeAll(keepingCapacity: true)
            pendingBytes = 0
        }
        let total = results.reduce(0) { $0 + $1.differences.filter { $0.left > 0 }.count }
        var done = 0
        for result in results {
            for difference in result.differences where difference.left > 0 {
                let start = difference.bucketStart
                let range = start..<Timestamp(microseconds: start.microseconds + bucketMicros)
                var query = EventQuery(scopeId: result.scopeId, range: range, timebase: timebase, lanes: [difference.lane], limit: batchSize)
                while true {
                    let page = try await edge.page(query)
                    for event in page.events {
                        let bytes = SyncBatchCodec.recordBytes(event)
                        if !pending.isEmpty, pendingBytes + bytes > maxBatchBytes { try await flush() }
                        pending.append(CommittedEvent(seq: 0, event: event))
                        pendingBytes += bytes
                        if pending.count >= batchSize { try await flush() }
                    }
                    guard let next = page.next else { break }
                    query.after = next
                }
                done += 1
                progress("repair: \(done)/\(total) buckets, \(sent + pending.count) events re-sent")
            }
        }
        try await flush()
        return sent
    }
}
