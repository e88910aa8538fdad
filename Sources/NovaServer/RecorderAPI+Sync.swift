import CompressNIO
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NovaCore
import Prometheus
import Synchronization

extension RecorderAPI {
    /// `POST /v1/sync/batches` (hub): decode and check the whole batch, then apply it and advance
    /// the site's watermark in one transaction, answering only after the commit (sync.md step 2).
    /// A sync token ships only for its own site (403). A malformed batch is refused whole (400).
    /// Beyond `sync.maxConcurrentBatches` applies at once the hub answers 503 with `Retry-After`,
    /// which the edge honours while it keeps recording.
    func receiveSyncBatch(_ request: Request, context: NovaRequestContext) async throws -> Response {
        try QueryParameters(request.uri).finish()
        let mediaType = request.headers[.contentType]?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces)
        guard let version = SyncBatchCodec.version(mediaType: mediaType) else {
            throw APIError(
                .unsupportedMediaType,
                "Content-Type: must be \(SyncBatchCodec.contentType) (or version 1's \(SyncBatchCodec.ndjsonContentType)), found \(request.headers[.contentType].map(quotedParameter) ?? "none")")
        }
        let body = try await decodedBody(request, unapplied: "nothing applied")
        var decoded: SyncBatch
        do {
            decoded = try body.withUnsafeReadableBytes { raw in try SyncBatchCodec.decode(raw.bindMemory(to: UInt8.self), version: version, decoder: decoder) }
        } catch let error as SyncBatchError {
            metrics.syncBatchesRefused.increment()
            throw APIError(.badRequest, "sync batch refused, nothing applied: \(error.message)")
        }
        decoded.capClaims(at: Timestamp.now())
        let batch = decoded
        if let bound = context.syncSiteId, bound != batch.siteId {
            throw APIError(.forbidden, "siteId: this token ships for site \(quotedParameter(bound)), not \(quotedParameter(batch.siteId))")
        }
        guard syncAdmission.enter() else {
            metrics.syncOverloaded.increment()
            throw APIError(.serviceUnavailable, "hub busy: \(configuration.sync.maxConcurrentBatches) sync batches are being applied; retry later", headers: [.retryAfter: "1"])
        }
        defer { syncAdmission.leave() }
        let store = store
        let sequencer = syncSequencer
        let result: SyncApplyResult
        do {
            result = try await store.applySync(batch) {
                await sequencer.waitTurn(batch) { try? await store.syncWatermark(siteId: batch.siteId, storeId: batch.storeId).ackedSeq }
            }
        } catch {
            throw APIError.store(error)
        }
        let outcome = result.outcome
        syncSequencer.finished(batch, ackedSeq: outcome.watermark.ackedSeq)
        let site = metrics.syncSite(batch.siteId)
        switch outcome {
        case .applied(let watermark, let accepted, let duplicates):
            // LIVE streams get them from memory, as after an ingest (not by reading them back).
            if accepted > 0 { await feed.published(result.appended, seqs: result.ingestSeqs) }
            // Outbox batches only, as `GET /v1/sync/sites` counts them: not heartbeats (every few
            // seconds from an idle edge) nor repairs.
            if batch.kind == .outbox {
                site.eventsApplied.increment(by: Int64(accepted))
                site.batchesApplied.increment()
                site.pendingEvents.set(Double(batch.outboxSize))
                if let from = batch.pendingFrom { site.lagSeconds.set(Swift.max(0, Double(Timestamp.now().microseconds - from.microseconds) / 1e6)) }
            }
            return watermarkResponse(watermark, extra: #","accepted":\#(accepted),"duplicates":\#(duplicates)"#)
        case .alreadyApplied(let watermark):
            return watermarkResponse(watermark, extra: #","replay":true"#)
        case .gap(let watermark):
            let error = "firstSeq: \(batch.firstSeq) leaves a gap after ackedSeq \(watermark.ackedSeq); resume from \(watermark.ackedSeq + 1)"
            var text = #"{"error":"#
            text += quotedJSON(error)
            return watermarkResponse(watermark, status: .conflict, prefix: text + ",")
        }
    }

    /// `GET /v1/sync/watermark?siteId=…&storeId=…` (sync role): where an edge resumes (sync.md step 3).
    func syncWatermark(_ request: Request, context: NovaRequestContext) async throws -> Response {
        var p = try QueryParameters(request.uri)
        let siteId = try p.required("siteId")
        let storeIdText = try p.required("storeId")
        try p.finish()
        guard let storeId = SyncBatch.storeId(storeIdText) else {
            throw APIError(.badRequest, "storeId: \(SyncBatch.storeIdRule), found \(quotedParameter(storeIdText))")
        }
        if let bound = context.syncSiteId, bound != siteId {
            throw APIError(.forbidden, "siteId: this token ships for site \(quotedParameter(bound)), not \(quotedParameter(siteId))")
        }
        do {
            return watermarkResponse(try await store.syncWatermark(siteId: siteId, storeId: storeId))
        } catch {
            throw APIError.store(error)
        }
    }

    private func watermarkResponse(_ w: SyncWatermark, status: HTTPResponse.Status = .ok, prefix: String = "{", extra: String = "") -> Response {
        let last = w.lastEventId.map { "\"\($0.hex)\"" } ?? "null"
        return jsonResponse(prefix + #""ackedSeq":\#(w.ackedSeq),"lastEventId":\#(last)\#(extra)}"#, status: status)
    }

    /// Each site's lag and pending events as of now, for a scrape: set only when batches arrive,
    /// they would stand still through an outage, when they matter most. A site's current store
    /// is the one heard from last (a replaced box's old store stays listed, frozen).
    func refreshSiteGauges() async {
        guard let sites = try? await store.syncSites() else { return }
        let now = Timestamp.now()
        var latest = [String: SyncSite]()
        for s in sites where latest[s.siteId].map({ s.lastContactAt > $0.lastContactAt }) ?? true { latest[s.siteId] = s }
        metrics.keepSyncSites(Set(latest.keys))
        for (siteId, s) in latest {
            let gauges = metrics.syncSite(siteId)
            gauges.pendingEvents.set(Double(s.pendingEvents))
            if let through = s.completeThrough { gauges.lagSeconds.set(Swift.max(0, Double(now.microseconds - through.microseconds) / 1e6)) }
        }
    }

    /// `DELETE /v1/sync/sites/{siteId}` (hub, admin): forgets a retired site's watermarks, which
    /// would otherwise hold back every answer's `Nova-Complete-Through` forever. Its events stay.
    func forgetSyncSite(_ request: Request, context: NovaRequestContext) async throws -> Response {
        try QueryParameters(request.uri).finish()
        // The router hands over the path segment as sent: percent-encoded.
        let siteId = try QueryParameters.decode(Substring(try context.parameters.require("siteId")), of: "siteId")
        let forgotten: Int
        do {
            forgotten = try await store.forgetSyncSite(siteId)
        } catch {
            throw APIError.store(error)
        }
        guard forgotten > 0 else { throw APIError(.notFound, "siteId: no site \(quotedJSON(siteId)) has shipped to this hub (GET /v1/sync/sites lists them)") }
        completeThrough.invalidate()
        await refreshSiteGauges()
        logger.notice("forgot a sync site", metadata: ["siteId": "\(siteId)", "stores": "\(forgotten)"])
        return jsonResponse(#"{"siteId":\#(quotedJSON(siteId)),"storesForgotten":\#(forgotten)}"#)
    }

    /// `GET /v1/sync/sites` (hub): every site's watermarks and lag (sync.md, Observability).
    func syncSites(_ request: Request) async throws -> Response {
        try QueryParameters(request.uri).finish()
        let sites: [SyncSite]
        do {
            sites = try await store.syncSites()
        } catch {
            throw APIError.store(error)
        }
        let now = Timestamp.now()
        let items = sites.map { s in
            let lag = s.completeThrough.map { String(format: "%.3f", Swift.max(0, Double(now.microseconds - $0.microseconds) / 1e6)) } ?? "null"
            return #"{"siteId":\#(quotedJSON(s.siteId)),"storeId":\#(quotedJSON(s.storeId)),"ackedSeq":\#(s.ackedSeq),"#
                + #""completeThrough":\#(s.completeThrough.map { "\"\($0.rfc3339)\"" } ?? "null"),"lagSeconds":\#(lag),"#
                + #""pendingEvents":\#(s.pendingEvents),"lastContactAt":"\#(s.lastContactAt.rfc3339)","#
                + #""batchesApplied":\#(s.batchesApplied),"eventsApplied":\#(s.eventsApplied),"#
                + #""completeThroughByScope":{\#(s.scopesCompleteThrough.sorted { $0.key < $1.key }.map { "\(quotedJSON($0.key)):\"\($0.value.rfc3339)\"" }.joined(separator: ","))},"#
                + #""otherScopesCompleteThrough":\#(s.otherScopesCompleteThrough.map { "\"\($0.rfc3339)\"" } ?? "null")}"#
        }
        return jsonResponse(#"{"sites":[\#(items.joined(separator: ","))]}"#)
    }

    /// `GET /v1/sync/status` (edge): the outbox and the link to the hub.
    func syncStatus(_ request: Request) async throws -> Response {
        try QueryParameters(request.uri).finish()
        guard let syncStatus else {
            throw APIError(.notFound, "sync: this recorder does not ship to a hub (sync.enabled is false)")
        }
        let s = try await syncStatus()
        let age = s.oldestPendingAgeSeconds.map { String(format: "%.3f", $0) } ?? "null"
        return jsonResponse(
            #"{"siteId":\#(quotedJSON(s.siteId)),"storeId":\#(quotedJSON(s.storeId)),"pendingEvents":\#(s.pendingEvents),"#
                + #""oldestPendingAgeSeconds":\#(age),"ackedSeq":\#(s.ackedSeq),"lastAckAt":\#(s.lastAckAt.map { "\"\($0.rfc3339)\"" } ?? "null"),"#
                + #""backoffSeconds":\#(String(format: "%.3f", s.backoffSeconds)),"lastError":\#(s.lastError.map(quotedJSON) ?? "null"),"#
                + #""upstreamReachable":\#(s.upstreamReachable)}"#)
    }

    /// `GET /v1/digests?scope=…&from=…&to=…&bucket=1m[&timebase=…][&lane=…]`: the bucket digests
    /// of sync.md, so that `nova verify` can compare stores it reaches only over HTTP.
    func digests(_ request: Request) async throws -> Response {
        var p = try QueryParameters(request.uri)
        let digestRequest = try DigestRequest(parameters: &p)
        let digests: [BucketDigest]
        do {
            digests = try await store.digests(digestRequest)
        } catch {
            throw APIError.store(error)
        }
        let items = digests.map { d in
            #"{"lane":"\#(d.lane.rawValue)","bucket":"\#(d.bucketStart.rfc3339)","count":\#(d.count),"xor":"\#(d.xor.hex)"}"#
        }
        return jsonResponse(#"{"digests":[\#(items.joined(separator: ","))]}"#)
    }
}

extension DigestRequest {
    init(parameters p: inout QueryParameters) throws(APIError) {
        let scope = try p.scope()
        let from = try p.time("from")
        let to = try p.time("to")
        guard from <= to else { throw APIError(.badRequest, "from: must not be after to") }
        let bucketText = try p.required("bucket")
        guard let bucket = DigestRequest.parseBucket(bucketText) else {
            throw APIError(.badRequest, "bucket: must be a positive width up to 36500d, such as 1m, 30s, 500ms, 1h or 1d, found \(quotedParameter(bucketText))")
        }
        let (timebase, lanes, filters) = try p.selection()
        guard filters.isEmpty else { throw APIError(.badRequest, "\(filters.keys.sorted()[0].filterField): digests take no filters") }
        try p.finish()
        self.init(scopeId: scope, range: from..<to, timebase: timebase, lanes: lanes, bucketMicros: bucket)
    }
}

func quotedJSON(_ text: String) -> String {
    var out = [UInt8]()
    CanonicalJSON.writeString(text, into: &out)
    return String(decoding: out, as: UTF8.self)
}

/// Counts the sync batches being applied, refusing one beyond the limit rather than queueing it:
/// an edge retries later, so the hub holds no unbounded queue of bodies in memory.
final class SyncAdmission: Sendable {
    private let inFlight = Mutex(0)
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    func enter() -> Bool {
        inFlight.withLock { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
    }

    func leave() {
        inFlight.withLock { $0 -= 1 }
    }
}

/// The `Nova-Complete-Through` of query answers at a hub: for the scope asked about, the earliest
/// of the sites' `completeThrough` for it (each site by the store it shipped from last), so
/// "complete through T" holds for the scope's data from every site. A site that reports per scope
/// holds back only the scopes it has pending; one that does not (an older edge) holds back every
/// scope by its site-wide value. The sites are read from the store at most once a second; absent
/// where no site ships (an edge). `nova migrate`'s reserved site is not one: it copies, it does
/// not report completeness.
final class CompleteThrough: Sendable {
    private struct Cached {
        var sites: [SyncSite]
        var at: ContinuousClock.Instant
    }

    private let cached = Mutex(Cached(sites: [], at: .now - .seconds(60)))

    /// The next answer reads the sites again (one was forgotten).
    func invalidate() {
        cached.withLock { $0.at = .now - .seconds(60) }
    }

    func value(_ store: any EventStore, scope: String) async -> Timestamp? {
        let now = ContinuousClock.now
        var sites = cached.withLock { now - $0.at < .seconds(1) ? $0.sites : nil }
        if sites == nil {
            var latest = [String: SyncSite]()
            for site in (try? await store.syncSites()) ?? []
            where site.siteId != SyncSite.migrationSiteId && (latest[site.siteId]?.lastContactAt ?? .min) <= site.lastContactAt {
                latest[site.siteId] = site
            }
            let fresh = Array(latest.values)
            cached.withLock { $0 = Cached(sites: fresh, at: now) }
            sites = fresh
        }
        guard let sites, !sites.isEmpty else { return nil }
        return sites.map { $0.completeThrough(scope: scope) ?? .min }.min()
    }
}
