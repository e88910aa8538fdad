import Prometheus
import Synchronization

/// The server's own Prometheus series. They live in a registry the server is given (not the
/// process-global metrics system), so each server, in a test or in `nova`, reports its own.
public final class NovaMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let ingestAccepted: Counter
    let ingestDuplicates: Counter
    let ingestRejected: Counter
    let ingestBatches: Counter
    let ingestRefusedFull: Counter
    let appendDuration: DurationHistogram
    let queryDuration: DurationHistogram
    let streamClients: Gauge
    let streamEventsSent: Counter
    let streamCatchUps: Counter
    let streamsRefused: Counter
    let streamLag: DurationHistogram
    let syncBatchesRefused: Counter
    let syncOverloaded: Counter
    /// The sites with series here, so that a forgotten site's leave the scrape.
    private let sites = Mutex<Set<String>>([])

    static let latencyBuckets: [Duration] = [
        .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
        .seconds(2.5), .seconds(5),
    ]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let help = "Events offered to POST /v1/events, by outcome."
        ingestAccepted = registry.makeCounter(name: "nova_ingest_events_total", labels: [("result", "accepted")], help: help)
        ingestDuplicates = registry.makeCounter(name: "nova_ingest_events_total", labels: [("result", "duplicate")], help: help)
        ingestRejected = registry.makeCounter(name: "nova_ingest_events_total", labels: [("result", "rejected")], help: help)
        ingestBatches = registry.makeCounter(name: "nova_ingest_batches_total", help: "Ingest requests committed.")
        ingestRefusedFull = registry.makeCounter(
            name: "nova_ingest_refused_full_total", help: "Events refused with 507: the disk is full or the disk budget (database.sqlite.maxBytes) is reached.")
        appendDuration = registry.makeDurationHistogram(
            name: "nova_store_append_duration_seconds", buckets: Self.latencyBuckets,
            help: "Time to commit one ingest batch to the store.")
        queryDuration = registry.makeDurationHistogram(
            name: "nova_query_duration_seconds", buckets: Self.latencyBuckets,
            help: "Time to read one page of an ordered query from the store.")
        streamClients = registry.makeGauge(name: "nova_stream_clients", help: "WebSocket streams open.")
        streamEventsSent = registry.makeCounter(name: "nova_stream_events_sent_total", help: "Events sent to stream clients.")
        streamCatchUps = registry.makeCounter(
            name: "nova_stream_catchups_total", help: "Times a LIVE client fell behind the in-memory tail and was served from the store.")
        streamsRefused = registry.makeCounter(
            name: "nova_stream_refused_total", help: "Streams refused because their token had server.maxStreamsPerToken open.")
        streamLag = registry.makeDurationHistogram(
            name: "nova_stream_lag_seconds", buckets: Self.latencyBuckets,
            help: "Per client and chunk: time from a commit entering the live tail to its sending.")
        syncBatchesRefused = registry.makeCounter(name: "nova_sync_batches_refused_total", help: "Hub: sync batches refused as malformed (400).")
        syncOverloaded = registry.makeCounter(name: "nova_sync_overloaded_total", help: "Hub: sync batches answered 503 because too many were being applied.")
    }

    /// A site's series at the hub (the registry returns the same series for the same labels).
    struct SiteSeries {
        let batchesApplied: Counter
        let eventsApplied: Counter
        let pendingEvents: Gauge
        let lagSeconds: Gauge
    }

    func syncSite(_ siteId: String) -> SiteSeries {
        sites.withLock { _ = $0.insert(siteId) }
        return series(siteId)
    }

    /// Drops the series of every site not in `kept` (forgotten ones, perhaps by another process
    /// on the same store).
    func keepSyncSites(_ kept: Set<String>) {
        let gone = sites.withLock { sites in
            let gone = sites.subtracting(kept)
            sites.subtract(gone)
            return gone
        }
        for siteId in gone {
            let s = series(siteId)
            registry.unregisterCounter(s.batchesApplied)
            registry.unregisterCounter(s.eventsApplied)
            registry.unregisterGauge(s.pendingEvents)
            registry.unregisterGauge(s.lagSeconds)
        }
    }

    private func series(_ siteId: String) -> SiteSeries {
        let site = [("site", siteId)]
        return SiteSeries(
            batchesApplied: registry.makeCounter(name: "nova_sync_applied_batches_total", labels: site, help: "Hub: sync batches applied, per site."),
            eventsApplied: registry.makeCounter(name: "nova_sync_applied_events_total", labels: site, help: "Hub: events stored from sync batches, per site."),
            pendingEvents: registry.makeGauge(name: "nova_sync_site_pending_events", labels: site, help: "Hub: events the site's outbox held at its last batch."),
            lagSeconds: registry.makeGauge(
                name: "nova_sync_site_lag_seconds", labels: site, help: "Hub: now minus the site's completeThrough (its store heard from last), as of the scrape."))
    }

    /// Prometheus text exposition of every series in the registry.
    public func exposition() -> [UInt8] { registry.emitToBuffer() }
}
