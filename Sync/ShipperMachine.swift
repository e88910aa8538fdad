import NovaCore

/// The shipper's decisions (sync.md): when to ask the hub for its watermark, what to ship, when to
/// send a heartbeat, how long to back off, and when this store can no longer ship under its
/// `storeId`. Pure: the caller performs each ``Action``, reports what happened, and gets the next
/// one, so every path is tested without sockets, clocks or stores.
///
/// The hub's watermark is the truth. The machine forgets it (and asks again) at start, after any
/// failure, and after a 409, so an edge never ships on a guess of where the hub is.
public struct ShipperMachine: Sendable {
    public enum Action: Sendable, Hashable {
        /// Ask the hub for this store's `ackedSeq`.
        case fetchWatermark
        /// Read the events after this position (at most a batch) and ship them.
        case ship(after: Int64)
        /// Nothing pending and the hub not told for a while: send a heartbeat at this watermark.
        case heartbeat(ackedSeq: Int64)
        /// Nothing pending: wait for a commit after this position (or until a heartbeat is due).
        case idle(after: Int64)
        /// Back off, then ``resume(lastSeq:heartbeatDue:)``.
        case sleep(Duration)
        /// This store is not the one the hub acknowledged under its `storeId` (a restored backup,
        /// a copied file): give it a new identity and start again. The reason is for the log.
        case renewIdentity(reason: String)
    }

    /// What one shipment (a batch or a heartbeat) came to.
    public enum Outcome: Sendable, Hashable {
        /// Committed at the hub (applied now or before): its watermark.
        case acknowledged(SyncWatermark)
        /// The hub's watermark is behind the batch's start (409).
        case gap(SyncWatermark)
        /// The hub is busy (503); retry no sooner than `retryAfter`.
        case overloaded(retryAfter: Duration?)
        /// No answer: connection refused or reset, timeout, or a server error.
        case unreachable(String)
        /// The hub refused the batch as too large (413): nothing was applied.
        case tooLarge(String)
        /// The hub refused the request (a 4xx other than 409 and 413): a token or configuration fault
        /// that an operator must fix; retried at the longest back-off meanwhile.
        case refused(String)
    }

    public let maxBackoff: Duration
    public let baseBackoff: Duration

    /// The hub's watermark once known; nil means "ask the hub first".
    public private(set) var ackedSeq: Int64?
    /// Consecutive failures, which set the back-off.
    public private(set) var failures = 0
    public private(set) var lastError: String?
    public private(set) var upstreamReachable = false
    /// The back-off being waited, zero when none.
    public private(set) var backoff: Duration = .zero
    /// The most bytes a batch's events may take: `sync.maxBatchBytes`, halved below the size of
    /// each batch the hub refuses as too large, so that a hub with a lower body limit than the
    /// edge assumed still gets everything, in smaller batches.
    public private(set) var batchBytes: Int

    public init(maxBackoff: Duration = .seconds(30), baseBackoff: Duration = .milliseconds(250), maxBatchBytes: Int = 8 << 20) {
        self.maxBackoff = maxBackoff
        self.baseBackoff = baseBackoff
        self.batchBytes = maxBatchBytes
    }

    public mutating func start() -> Action {
        ackedSeq = nil
        return .fetchWatermark
    }

    /// The hub's watermark, with this store's head and the id of its event at the watermark (nil
    /// when the store no longer holds it: retention removed it after it was acknowledged).
    public mutating func watermark(_ w: SyncWatermark, lastSeq: Int64, idAtWatermark: EventID?, heartbeatDue: Bool) -> Action {
        upstreamReachable = true
        if w.ackedSeq > lastSeq {
            return .renewIdentity(reason: "the hub acknowledged this storeId up to \(w.ackedSeq) but the store holds only \(lastSeq) events")
        }
        if let hub = w.lastEventId, let ours = idAtWatermark, hub != ours {
            return .renewIdentity(reason: "the hub's event at position \(w.ackedSeq) is not this store's (\(hub.hex.prefix(12))… vs \(ours.hex.prefix(12))…)")
        }
        ackedSeq = w.ackedSeq
        succeeded()
        return next(lastSeq: lastSeq, heartbeatDue: heartbeatDue)
    }

    /// The next step given the store's head.
    public func next(lastSeq: Int64, heartbeatDue: Bool) -> Action {
        guard let acked = ackedSeq else { return .fetchWatermark }
        if acked < lastSeq { return .ship(after: acked) }
        return heartbeatDue ? .heartbeat(ackedSeq: acked) : .idle(after: acked)
    }

    /// What a shipment came to; `random` in [0, 1) spreads back-offs (jitter). `sent`: the
    /// batch's events and their bytes (nil for a heartbeat).
    public mutating func shipped(_ outcome: Outcome, lastSeq: Int64, random: Double, sent: (events: Int, bytes: Int)? = nil) -> Action {
        switch outcome {
        case .acknowledged(let w):
            upstreamReachable = true
            ackedSeq = w.ackedSeq
            succeeded()
            return next(lastSeq: lastSeq, heartbeatDue: false)
        case .gap(let w):
            upstreamReachable = true
            lastError = "the hub is at \(w.ackedSeq), behind the batch sent; resuming from there"
            ackedSeq = nil
            return .fetchWatermark
        case .overloaded(let retryAfter):
            upstreamReachable = true
            return failed("the hub is busy (503)", minimum: retryAfter, random: random, forget: false)
        case .unreachable(let message):
            upstreamReachable = false
            return failed(message, random: random)
        case .tooLarge(let message):
            upstreamReachable = true
            if let sent, sent.events > 1 {
                // Nothing was applied; the same events go again, in smaller batches, at once.
                batchBytes = Swift.max(1, Swift.min(batchBytes, sent.bytes) / 2)
                lastError = "the hub refused a batch of \(sent.events) events (\(sent.bytes) bytes) as too large (413); batches now carry at most \(batchBytes) bytes"
                ackedSeq = nil
                return .fetchWatermark
            }
            failures = Swift.max(failures, 62)
            return failed("\(message); a single event is over the hub's limit: raise server.maxBodyBytes at the hub", random: random)
        case .refused(let message):
            upstreamReachable = true
            failures = Swift.max(failures, 62)
            return failed(message, random: random)
        }
    }

    /// A failure outside a shipment (the watermark request, the local store): back off, then
    /// ask the hub again.
    public mutating func failed(_ message: String, reachable: Bool, random: Double) -> Action {
        upstreamReachable = reachable
        return failed(message, random: random)
    }

    /// The watermark request failed with `status` (nil: no answer). Weighed as a shipment's
    /// answer would be: no answer, a 5xx or a 429 back off as usual; any other 4xx (a token or
    /// configuration fault, which only an operator fixes) waits the longest back-off. An edge
    /// with a wrong token asks for its watermark first, so this is where that fault shows.
    public mutating func watermarkFailed(_ message: String, status: Int?, random: Double) -> Action {
        guard let status, (400..<500).contains(status), status != 408, status != 429 else {
            return failed(message, reachable: status != nil, random: random)
        }
        upstreamReachable = true
        failures = Swift.max(failures, 62)
        return failed(message, random: random)
    }

    /// After a ``Action/sleep(_:)``.
    public mutating func resume(lastSeq: Int64, heartbeatDue: Bool) -> Action {
        backoff = .zero
        return next(lastSeq: lastSeq, heartbeatDue: heartbeatDue)
    }

    private mutating func succeeded() {
        failures = 0
        lastError = nil
        backoff = .zero
    }

    private mutating func failed(_ message: String, minimum: Duration? = nil, random: Double, forget: Bool = true) -> Action {
        failures += 1
        lastError = message
        if forget { ackedSeq = nil }
        backoff = Swift.max(delay(random: random), minimum ?? .zero)
        return .sleep(backoff)
    }

    /// Exponential in the failures, capped, with jitter: `base · 2^(n-1)`, at most `maxBackoff`,
    /// scaled into its upper half so that edges cut off together do not return together.
    func delay(random: Double) -> Duration {
        let exponent = Swift.min(failures - 1, 30)
        let full = Swift.min(maxBackoff, baseBackoff * (1 << Swift.max(0, exponent)))
        return full * (0.5 + 0.5 * Swift.min(Swift.max(random, 0), 1))
    }
}
