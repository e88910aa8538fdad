import Logging
import NovaCore
import Prometheus
import ServiceLifecycle
import Synchronization

/// Dual-write (`database.type = "dual"`): keeps a shadow store equal to the primary while the
/// primary alone answers requests.
///
/// A write is acknowledged once the primary has committed it; the shadow then gets it as a sync
/// batch of the reserved site ``siteId``, applied with its watermark in one transaction, exactly
/// as `nova migrate` copies. So a shadow write that fails is not lost or skipped: it is retried
/// from the shadow's watermark, with back-off, until it lands, and every failure is counted.
/// A shadow that is down never slows or fails ingest. A periodic comparison of recent buckets
/// (what `nova verify` does) reports drift, and re-sends the primary's events of any bucket the
/// shadow lacks, so drift from outside (rows deleted in the shadow) is repaired too.
///
/// The comparison is incremental: each `verifyEvery` it reads only the buckets completed since
/// the last one (and those that differed then), so its cost follows the ingest rate; a full
/// sweep of `verifyWindow` every `sweepEvery` catches drift in buckets compared before.
public final class ShadowWriter: Service, Sendable {
    /// The site whose watermark (per primary `storeId`) is the shadow's checkpoint: the one
    /// `nova migrate` keeps, so that a backfill followed by dual mode copies each event once.
    public static let siteId = SyncSite.migrationSiteId

    public struct Settings: Sendable {
        public var batchSize = 5_000
        public var poll: Duration = .milliseconds(50)
        public var maxBackoff: Duration = .seconds(5)
        /// How often the buckets completed since the last comparison are compared.
        public var verifyEvery: Duration = .seconds(60)
        /// How far back (event time, canonical) a full sweep looks. A sweep reads the window's
        /// events in both stores, so its cost grows with window × ingest rate.
        public var verifyWindow: Duration = .seconds(600)
        /// How often a full sweep of `verifyWindow` runs (the first comparison is one).
        public var sweepEvery: Duration = .seconds(600)
        public var bucketMicros: Int64 = 60_000_000

        public init() {}
    }

    let primary: any EventStore
    let shadow: any EventStore
    let settings: Settings
    let logger: Logger
    let metrics: Metrics
    /// The shadow's watermark as last seen (for the comparison's clip).
    let acked = Mutex<Int64?>(nil)

    struct Metrics {
        let written: Counter
        let failures: Counter
        let lag: Gauge
        let up: Gauge
        let drift: Gauge
        let repaired: Counter
        let compared: Counter
    }

    public init(primary: any EventStore, shadow: any EventStore, settings: Settings, registry: PrometheusCollectorRegistry, logger: Logger) {
        self.primary = primary
        self.shadow = shadow
        self.settings = settings
        self.logger = logger
        metrics = Metrics(
            written: registry.makeCounter(name: "nova_dual_shadow_written_events_total", help: "Dual: events the shadow store took."),
            failures: registry.makeCounter(name: "nova_dual_shadow_failures_total", help: "Dual: shadow writes or comparisons that failed (each is retried)."),
            lag: registry.makeGauge(name: "nova_dual_shadow_lag_events", help: "Dual: events committed in the primary and not yet in the shadow."),
            up: registry.makeGauge(name: "nova_dual_shadow_up", help: "Dual: 1 when the shadow answered the last request of the copy."),
            drift: registry.makeGauge(name: "nova_dual_drift_buckets", help: "Dual: buckets where the last comparison found the stores different."),
            repaired: registry.makeCounter(name: "nova_dual_repaired_events_total", help: "Dual: events re-sent to the shadow after a comparison found drift."),
            compared: registry.makeCounter(name: "nova_dual_compared_events_total", help: "Dual: events of the primary that comparisons read (the shadow's are read too)."))
    }

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { try await self.copyLoop() }
                    group.addTask { try await self.compareLoop() }
                }
            }
        } catch where Task.isCancelled || error is CancellationError {
            // Shut down; the next start resumes at the shadow's watermark.
        }
    }

    /// Applies the primary's commits after the shadow's watermark, batch by batch.
    func copyLoop() async throws {
        var watermark: Int64?
        /// The last watermark seen, so that the lag keeps growing while the shadow is away.
        var known: Int64 = 0
        var backoff = Duration.milliseconds(100)
        var failing = false
        // A shadow still making its first connection is not failing: without this wait every
        // start logged a failed copy and counted one in nova_dual_shadow_failures_total, a false
        // alarm for anyone alerting on it. One that is not up within the bound is reported.
        let firstContact = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < firstContact, (try? await shadow.checkReady()) == nil {
            try await Task.sleep(for: .milliseconds(100))
        }
        while true {
            do {
                let outbox = try await primary.outboxState()
                let (storeId, head) = (outbox.storeId, outbox.lastSeq)
                if watermark == nil {
                    watermark = try await shadow.syncWatermark(siteId: Self.siteId, storeId: storeId).ackedSeq
                    metrics.up.set(1.0)
                }
                let after = watermark!
                known = after
                // Bounded by bytes too: a batch of large events stays a few megabytes.
                let events = try await primary.committed(after: after, limit: settings.batchSize, maxBytes: 16 << 20)
                metrics.lag.set(Double(max(0, head - after)))
                acked.withLock { $0 = after }
                guard let last = events.last else {
                    try await Task.sleep(for: settings.poll)
                    continue
                }
                let batch = SyncBatch(
                    siteId: Self.siteId, storeId: storeId, firstSeq: after + 1, lastSeq: last.seq, pendingFrom: nil,
                    outboxSize: max(0, head - last.seq), events: events)
                let result = try await shadow.applySync(batch)
                if case .applied(_, let accepted, let duplicates) = result.outcome { metrics.written.increment(by: Int64(accepted + duplicates)) }
                watermark = result.outcome.watermark.ackedSeq
                metrics.up.set(1.0)
                if failing {
                    logger.info("dual: the shadow store takes writes again; catching up", metadata: ["from": "\(after)", "head": "\(head)"])
                    failing = false
                }
                backoff = .milliseconds(100)
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                metrics.failures.increment()
                metrics.up.set(0.0)
                if !failing {
                    logger.warning("dual: copying to the shadow store failed; the primary keeps serving, and the copy is retried", metadata: ["error": "\(describe(error))"])
                    failing = true
                }
                watermark = nil
                if let head = try? await primary.lastCommittedSeq() { metrics.lag.set(Double(max(0, head - known))) }
                try await Task.sleep(for: backoff)
                backoff = min(backoff * 2, settings.maxBackoff)
            }
        }
    }

    /// Where the comparison stands between cycles.
    struct Progress: Sendable {
        /// Buckets before this (event time, µs) were compared since the last sweep.
        var comparedUntil: Int64?
        /// The earliest bucket that differed last time, compared again next time.
        var recheckFrom: Int64?
        var lastSweep: ContinuousClock.Instant?
    }

    /// Every `verifyEvery`: compares the buckets the shadow should hold in full and that were not
    /// compared yet (all of `verifyWindow` when a sweep is due), reports drift, and re-sends the
    /// primary's events of buckets the shadow lacks.
    func compareLoop() async throws {
        var progress = Progress()
        while true {
            try await Task.sleep(for: settings.verifyEvery)
            guard let after = acked.withLock({ $0 }) else { continue }
            do {
                let comparison = try await compare(after: after, progress: &progress)
                metrics.drift.set(Double(comparison.differing))
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                metrics.failures.increment()
                logger.debug("dual: comparison skipped", metadata: ["error": "\(describe(error))"])
            }
        }
    }

    /// What one comparison found and read.
    struct Comparison: Sendable, Equatable {
        /// Differing buckets, before any repair.
        var differing: Int
        /// Events of the primary read.
        var comparedEvents: Int64
    }

    func compare(after: Int64, progress: inout Progress) async throws -> Comparison {
        let now = Timestamp.now().microseconds
        let clock = ContinuousClock.now
        var verification = Verification()
        verification.bucketMicros = settings.bucketMicros
        let windowStart = DigestRequest.bucketStart(now - Int64(settings.verifyWindow.components.seconds) * 1_000_000, width: settings.bucketMicros)
        let sweep = progress.lastSweep.map { clock - $0 >= settings.sweepEvery } ?? true
        var from = windowStart
        if !sweep, let until = progress.comparedUntil {
            from = max(windowStart, min(until, progress.recheckFrom ?? until))
        }
        verification.range = Timestamp(microseconds: from)..<Timestamp(microseconds: now + 1)
        // Buckets holding a commit the shadow has not taken yet are not comparable yet.
        let unshipped = try await primary.oldestCanonicalTime(after: after)?.microseconds ?? now
        let clipEnd = DigestRequest.bucketStart(min(unshipped, now), width: settings.bucketMicros)
        verification.clipEnd = Timestamp(microseconds: clipEnd)
        let results = try await verification.run(DigestSide(store: primary, name: "primary"), DigestSide(store: shadow, name: "shadow"))
        let compared = results.reduce(0) { $0 + $1.leftEvents }
        metrics.compared.increment(by: compared)
        if sweep { progress.lastSweep = clock }
        progress.comparedUntil = clipEnd
        progress.recheckFrom = results.flatMap { $0.differences.map(\.bucketStart.microseconds) }.min()
        let differing = results.reduce(0) { $0 + $1.differences.count }
        guard differing > 0 else { return Comparison(differing: 0, comparedEvents: compared) }
        let buckets = results.flatMap { r in r.differences.prefix(5).map { "\(r.scopeId)/\($0.lane.rawValue)@\($0.bucketStart): \($0.left) vs \($0.right)" } }
        logger.warning("dual: the shadow store differs from the primary", metadata: ["buckets": "\(differing)", "first": "\(buckets.prefix(5))"])
        let shadow = shadow
        let resent = try await Repair(siteId: Self.siteId, batchSize: settings.batchSize).run(
            results, edge: primary, timebase: verification.timebase, bucketMicros: settings.bucketMicros,
            deliver: { batch in _ = try await shadow.applySync(batch) })
        if resent > 0 {
            metrics.repaired.increment(by: Int64(resent))
            logger.warning("dual: re-sent the primary's events of the differing buckets to the shadow", metadata: ["events": "\(resent)"])
        }
        return Comparison(differing: differing, comparedEvents: compared)
    }

    private func describe(_ error: any Error) -> String {
        (error as? StoreError)?.message ?? "\(error)"
    }
}
