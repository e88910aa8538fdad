import Logging
import NovaCore
import Prometheus
import ServiceLifecycle
import Synchronization

/// The edge's sync service inside `nova record`: performs the ``ShipperMachine``'s actions against
/// the local store and the hub, with a window of batches in flight that the hub applies in order
/// (sync.md's protocol is sequential per store), records each acknowledgement locally, and keeps
/// the status and metrics current.
///
/// Nothing here deletes anything: the outbox is the store itself, read by `ingestSeq`.
public final class Shipper: Service, Sendable {
    public struct Settings: Sendable {
        public var siteId: String
        public var batchSize: Int
        public var maxBackoff: Duration
        /// How often an idle shipper tells the hub it is still complete (a heartbeat).
        public var heartbeat: Duration = .seconds(1)
        /// How often an idle shipper looks for new commits.
        public var poll: Duration = .milliseconds(50)
        /// Below this many pending events after a batch, `pendingFrom` is computed exactly (a
        /// scan of that tail); above it, the batch reports none and the hub keeps its last.
        public var exactPendingFromTail: Int64 = 50_000
        /// Batches in flight at once (at least 1): while the hub applies one, the next are on
        /// their way, being decoded, or inserting their dedupe entries. Measured on a PostgreSQL
        /// hub: 3 or 4 drained a backlog about a tenth faster than 2. A hub admits
        /// `sync.maxConcurrentBatches` at once (8 by default), so two edges catching up at once
        /// still fit.
        public var window = 3
        /// The most bytes of events in one batch (`sync.maxBatchBytes`).
        public var maxBatchBytes = 8 << 20

        public init(siteId: String, batchSize: Int, maxBackoff: Duration) {
            self.siteId = siteId
            self.batchSize = batchSize
            self.maxBackoff = maxBackoff
        }
    }

    let store: any EventStore
    let client: SyncClient
    let settings: Settings
    let logger: Logger
    let metrics: ShipperMetrics
    let inFlight: InFlightIngest
    private let state = Mutex(Snapshot())

    /// What `status()` reports between steps.
    struct Snapshot {
        var machine = ShipperMachine()
        var lastAckAt: Timestamp?
        /// The latest `pendingFrom` the hub acknowledged: it is complete up to there, so the lag
        /// is the time since, and keeps growing while the link is down.
        var completeThrough: Timestamp?
    }

    /// `inFlight`: the ingest requests of the recorder this shipper ships for.
    public init(
        store: any EventStore, client: SyncClient, settings: Settings, inFlight: InFlightIngest, registry: PrometheusCollectorRegistry, logger: Logger
    ) {
        self.store = store
        self.inFlight = inFlight
        self.client = client
        self.settings = settings
        self.logger = logger
        self.metrics = ShipperMetrics(registry: registry)
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown { await self.loop() }
    }

    /// The edge's `GET /v1/sync/status`.
    public func status() async throws -> SyncStatusReport {
        let outbox = try await store.outboxState()
        let snapshot = state.withLock { $0 }
        var age: Double?
        if outbox.pendingEvents > 0, let first = try await store.committed(after: outbox.ackedSeq, limit: 1).first {
            age = Swift.max(0, Double(Timestamp.now().microseconds - first.event.canonicalTruthTime.microseconds) / 1e6)
        }
        let m = snapshot.machine
        return SyncStatusReport(
            siteId: settings.siteId, storeId: outbox.storeId, pendingEvents: outbox.pendingEvents, oldestPendingAgeSeconds: age,
            ackedSeq: m.ackedSeq ?? outbox.ackedSeq, lastAckAt: snapshot.lastAckAt, backoffSeconds: m.backoff.seconds, lastError: m.lastError,
            upstreamReachable: m.upstreamReachable)
    }

    private func loop() async {
        var machine = ShipperMachine(maxBackoff: settings.maxBackoff, maxBatchBytes: settings.maxBatchBytes)
        var action = machine.start()
        var lastContact = ContinuousClock.now - settings.heartbeat
        var lastGauges = ContinuousClock.now - .seconds(1)
        /// The batches sent after the one being awaited, in order (the rest of the window).
        var followers = [InFlight]()
        defer { for f in followers { f.task.cancel() } }
        while !Task.isCancelled {
            state.withLock { $0.machine = machine }
            if ContinuousClock.now - lastGauges >= .seconds(1) {
                lastGauges = .now
                await updateGauges(machine)
            }
            let heartbeatDue = ContinuousClock.now - lastContact >= settings.heartbeat
            do {
                switch action {
                case .fetchWatermark:
                    let outbox = try await store.outboxState()
                    let w: SyncWatermark
                    do {
                        w = try await client.watermark(siteId: settings.siteId, storeId: outbox.storeId)
                    } catch {
                        action = machine.watermarkFailed(error.message, status: error.status, random: .random(in: 0..<1))
                        note(machine, failure: error.message)
                        continue
                    }
                    var id: EventID?
                    if w.ackedSeq > 0, let at = try await store.committed(after: w.ackedSeq - 1, limit: 1).first, at.seq == w.ackedSeq {
                        id = at.event.eventId
                    }
                    action = machine.watermark(w, lastSeq: outbox.lastSeq, idAtWatermark: id, heartbeatDue: heartbeatDue)
                    if let acked = machine.ackedSeq {
                        try await store.recordAcknowledged(acked)
                        // The hub's answer confirms what it holds: after a restart with nothing
                        // new to ship, `lastAckAt` would otherwise stay null.
                        state.withLock { $0.lastAckAt = .now() }
                        logger.info("sync resumes", metadata: ["ackedSeq": "\(acked)", "pending": "\(outbox.lastSeq - acked)", "storeId": "\(outbox.storeId)"])
                    }
                case .ship(let after):
                    // A window of batches: the one whose answer is awaited, and the next ones,
                    // read, encoded and sent while it is in flight, so the hub has decoded them
                    // and applies each as soon as the one before commits (it waits for its turn
                    // there). The protocol's order is kept by the positions: a batch the hub
                    // cannot apply next is answered 409 and shipping resumes from the watermark.
                    let current: InFlight
                    if let next = followers.first, next.batch.after == after {
                        current = followers.removeFirst()
                    } else {
                        for stale in followers { try await record(await stale.answer(), of: stale) }
                        followers = []
                        guard let batch = try await prepare(after: after, maxBytes: machine.batchBytes) else {
                            action = machine.next(lastSeq: after, heartbeatDue: heartbeatDue)
                            continue
                        }
                        current = send(batch)
                    }
                    var tail = followers.last?.batch ?? current.batch
                    while followers.count < settings.window - 1, tail.head > tail.lastSeq, let next = try? await prepare(after: tail.lastSeq, maxBytes: machine.batchBytes) {
                        followers.append(send(next))
                        tail = next
                    }
                    let outcome = await current.answer()
                    lastContact = .now
                    try await record(outcome, of: current)
                    action = machine.shipped(
                        outcome, lastSeq: Swift.max(current.batch.head, followers.last?.batch.head ?? 0), random: .random(in: 0..<1),
                        sent: (current.batch.count, current.batch.bytes))
                    note(machine, outcome: outcome)
                    var inStep = false
                    if case .acknowledged(let w) = outcome { inStep = w.ackedSeq == current.batch.lastSeq }
                    if !inStep {
                        // Their acknowledgements are the hub's truth whatever came of the first;
                        // the machine resumes from the watermark it asks for.
                        for next in followers { try await record(await next.answer(), of: next) }
                        followers = []
                    }
                case .heartbeat(let acked):
                    let pending = try await pendingFrom(after: acked, head: acked)
                    let claim = pending?.site
                    let batch = SyncBatch(
                        kind: .heartbeat, siteId: settings.siteId, storeId: try await store.outboxState().storeId, firstSeq: 0, lastSeq: acked,
                        pending: pending, outboxSize: 0, events: [])
                    let outcome = await client.ship(batch)
                    lastContact = .now
                    if case .acknowledged = outcome {
                        state.withLock { $0.lastAckAt = .now() }
                        if let claim { acknowledged(through: claim) }
                    }
                    action = machine.shipped(outcome, lastSeq: try await store.lastCommittedSeq(), random: .random(in: 0..<1))
                    note(machine, outcome: outcome)
                case .idle:
                    try await Task.sleep(for: settings.poll)
                    action = machine.next(lastSeq: try await store.lastCommittedSeq(), heartbeatDue: heartbeatDue)
                case .sleep(let delay):
                    metrics.retries.increment()
                    state.withLock { $0.machine = machine }
                    try await Task.sleep(for: delay)
                    action = machine.resume(lastSeq: try await store.lastCommittedSeq(), heartbeatDue: true)
                case .renewIdentity(let reason):
                    // A batch still in flight was sent under the old identity: its answer must not
                    // be recorded in the renewed store.
                    for f in followers { f.task.cancel() }
                    followers = []
                    let fresh = try await store.renewStoreId()
                    logger.error("sync: this store no longer matches what the hub acknowledged; shipping everything again under a new storeId (the hub dedupes)",
                                 metadata: ["reason": "\(reason)", "storeId": "\(fresh)"])
                    action = machine.start()
                }
            } catch where error is CancellationError || Task.isCancelled {
                // Shutting down (the store reports a cancelled read as its own error).
                return
            } catch {
                let message = (error as? StoreError)?.message ?? "\(error)"
                logger.error("sync: the local store failed", metadata: ["error": "\(message)"])
                // Resuming from the hub's watermark; a batch in flight is left to it.
                for f in followers { f.task.cancel() }
                followers = []
                action = machine.failed("local store: \(message)", reachable: machine.upstreamReachable, random: .random(in: 0..<1))
            }
        }
    }

    /// A batch read and encoded, ready to send.
    struct Prepared: Sendable {
        var after: Int64
        var lastSeq: Int64
        var head: Int64
        var count: Int
        /// The batch's encoded bytes (before compression).
        var bytes: Int
        var pendingFrom: Timestamp?
        var encoded: SyncClient.Encoded
    }

    /// A batch sent, and its answer to come.
    struct InFlight {
        var batch: Prepared
        var started: ContinuousClock.Instant
        var task: Task<ShipperMachine.Outcome, Never>

        /// The answer; cancelling the waiter cancels the request.
        func answer() async -> ShipperMachine.Outcome {
            await withTaskCancellationHandler { await task.value } onCancel: { task.cancel() }
        }
    }

    private func send(_ batch: Prepared) -> InFlight {
        let client = client
        return InFlight(batch: batch, started: .now, task: Task { await client.ship(batch.encoded) })
    }

    /// Keeps an acknowledgement: in the store (the outbox's cache), the status and the metrics.
    private func record(_ outcome: ShipperMachine.Outcome, of sent: InFlight) async throws {
        let batch = sent.batch
        guard case .acknowledged(let w) = outcome else { return }
        try await store.recordAcknowledged(w.ackedSeq)
        state.withLock { $0.lastAckAt = .now() }
        guard w.ackedSeq >= batch.lastSeq else { return }
        metrics.batches.increment()
        metrics.events.increment(by: Int64(batch.count))
        metrics.shipDuration.record(ContinuousClock.now - sent.started)
        if let from = batch.pendingFrom { acknowledged(through: from) }
    }

    private func acknowledged(through claim: Timestamp) {
        state.withLock { $0.completeThrough = claim }
        updateLag()
    }

    private func updateLag() {
        guard let claim = state.withLock({ $0.completeThrough }) else { return }
        metrics.lag.set(Swift.max(0, Double(Timestamp.now().microseconds - claim.microseconds) / 1e6))
    }

    /// Reads the batch after `after` (at most `maxBytes` of events, or one event) and encodes it;
    /// nil when nothing is stored after it.
    private func prepare(after: Int64, maxBytes: Int) async throws -> Prepared? {
        let outbox = try await store.outboxState()
        // Bounded by bytes as it is read, not only once read: 5,000 events of a megabyte each
        // would take gigabytes before the batch was cut to size.
        var events = try await store.committed(after: after, limit: settings.batchSize, maxBytes: maxBytes)
        events.removeLast(events.count - SyncBatchCodec.fitting(events, maxBytes: maxBytes))
        guard let last = events.last else { return nil }
        let head = Swift.max(outbox.lastSeq, last.seq)
        let batch = SyncBatch(
            siteId: settings.siteId, storeId: outbox.storeId, firstSeq: after + 1, lastSeq: last.seq,
            pending: try await pendingFrom(after: last.seq, head: head), outboxSize: head - last.seq, events: events)
        let encoded = client.encode(batch)
        return Prepared(
            after: after, lastSeq: last.seq, head: head, count: events.count, bytes: encoded.uncompressedBytes, pendingFrom: batch.pendingFrom, encoded: encoded)
    }

    /// The smallest canonical time still unacknowledged after a batch ending at `last` (sync.md),
    /// for the site and per scope: the oldest of the stored tail (per scope), of the ingest
    /// requests still committing (whose scopes are not known yet, so they count for every scope),
    /// and the clock. Exact when the tail is short; nil (the hub keeps its last values) when long.
    private func pendingFrom(after last: Int64, head: Int64) async throws -> PendingFrom? {
        // Read before the tail: a request that commits meanwhile is then in the tail.
        let now = Timestamp.now()
        let floor = Swift.min(inFlight.oldest ?? now, now)
        guard head - last <= settings.exactPendingFromTail else { return nil }
        let scopes = try await store.oldestCanonicalTimes(after: last).mapValues { Swift.min($0, floor) }
        return PendingFrom(site: Swift.min(scopes.values.min() ?? floor, floor), scopes: scopes, otherScopes: floor)
    }

    private func note(_ machine: ShipperMachine, outcome: ShipperMachine.Outcome) {
        switch outcome {
        case .acknowledged: break
        case .gap(let w): logger.warning("sync: the hub is behind the batch sent (409); resuming from its watermark", metadata: ["ackedSeq": "\(w.ackedSeq)"])
        case .tooLarge where machine.failures == 0:
            logger.warning("sync: \(machine.lastError ?? "the hub refused a batch as too large"); set sync.maxBatchBytes below the hub's server.maxBodyBytes")
        case .refused, .tooLarge:
            // Not an outage: nothing ships until an operator acts, so every attempt says so.
            logger.error("sync: the hub refused the request; retrying at the longest back-off", metadata: [
                "error": "\(machine.lastError ?? "\(outcome)")", "backoff": "\(machine.backoff)",
            ])
        default: note(machine, failure: machine.lastError ?? "\(outcome)")
        }
    }

    private func note(_ machine: ShipperMachine, failure: String) {
        // The first failure of a run at warning, the rest at debug: an outage is one story.
        let level: Logger.Level = machine.failures <= 1 ? .warning : .debug
        logger.log(level: level, "sync: shipping failed; backing off and keeping everything", metadata: [
            "error": "\(failure)", "backoff": "\(machine.backoff)", "failures": "\(machine.failures)",
        ])
    }

    private func updateGauges(_ machine: ShipperMachine) async {
        guard let status = try? await status() else { return updateLag() }
        metrics.pending.set(Double(status.pendingEvents))
        metrics.oldestPendingAge.set(status.oldestPendingAgeSeconds ?? 0)
        metrics.reachable.set(machine.upstreamReachable ? 1.0 : 0.0)
        if state.withLock({ $0.completeThrough }) == nil {
            // Nothing acknowledged yet in this run (the hub unreachable since the start): the hub
            // lacks at least the oldest pending event, so the lag is at least its age (it read 0).
            metrics.lag.set(status.oldestPendingAgeSeconds ?? 0)
        } else {
            updateLag()
        }
    }
}

/// The edge's sync series (sync.md, Observability).
struct ShipperMetrics: Sendable {
    let pending: Gauge
    let oldestPendingAge: Gauge
    let reachable: Gauge
    let lag: Gauge
    let batches: Counter
    let events: Counter
    let retries: Counter
    let shipDuration: DurationHistogram

    init(registry: PrometheusCollectorRegistry) {
        pending = registry.makeGauge(name: "nova_sync_pending_events", help: "Edge: events recorded but not yet acknowledged by the hub.")
        oldestPendingAge = registry.makeGauge(
            name: "nova_sync_oldest_pending_age_seconds", help: "Edge: age of the canonical time of the oldest unacknowledged event.")
        reachable = registry.makeGauge(name: "nova_sync_upstream_reachable", help: "Edge: 1 when the hub answered the last request.")
        lag = registry.makeGauge(name: "nova_sync_lag_seconds", help: "Edge: now minus the pendingFrom of the last acknowledged batch (the hub's completeThrough for this site), refreshed every second.")
        batches = registry.makeCounter(name: "nova_sync_shipped_batches_total", help: "Edge: batches the hub acknowledged.")
        events = registry.makeCounter(name: "nova_sync_shipped_events_total", help: "Edge: events in batches the hub acknowledged.")
        retries = registry.makeCounter(name: "nova_sync_retries_total", help: "Edge: back-offs after a failed or refused shipment.")
        shipDuration = registry.makeDurationHistogram(
            name: "nova_sync_ship_duration_seconds",
            buckets: [.milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10)],
            help: "Edge: time from sending a batch to its acknowledgement.")
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
