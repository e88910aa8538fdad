import Logging
import NIOCore
import NovaCore
import ServiceLifecycle

/// The recent tail of the store's commit order, shared by every LIVE stream of a process.
///
/// The store stays the source of truth: the feed only holds the last ``capacity`` committed
/// events, each with its `event` message already encoded, so twenty clients cost one encoding.
/// Events enter in `ingestSeq` order with no gap: an append of this process is taken as it is when
/// it continues the tail, anything else (a gap, another process's commit signalled by the store, a
/// periodic check) is read from the store by `ingestSeq`. A client behind the ring's start reads
/// the store itself; nobody is dropped and memory stays bounded, by count and by bytes (events
/// of up to a megabyte each would make 131,072 of them a hundred gigabytes).
public actor CommitFeed {
    /// A class, not a struct: each LIVE client takes every entry, and handing out a reference
    /// costs one retain where copying the event's fields cost one per field (perf of LIVE to 20
    /// clients showed those copies).
    public final class Entry: Sendable {
        public let seq: Int64
        public let event: Event
        /// `{"type":"event","event":{…}}` as sent to clients (shared storage, never copied).
        /// Encoded on the first read (which replaces the entry), so a recorder without streams
        /// never encodes.
        public let message: ByteBuffer?
        /// When the feed took it in, for the delivery-lag metric.
        public let at: ContinuousClock.Instant
        /// About what it holds in memory: the event's content, and its message once encoded.
        let bytes: Int

        init(seq: Int64, event: Event, message: ByteBuffer? = nil, at: ContinuousClock.Instant = .now) {
            self.seq = seq
            self.event = event
            self.message = message
            self.at = at
            bytes = 128 + event.preimageLength + (message?.readableBytes ?? 0)
        }

        /// What a slot holds once its entry is dropped, so that the entry's memory goes at once.
        static let dropped = Entry(seq: 0, event: Event(
            scopeId: "-", sourceTruthTime: .min, canonicalTruthTime: .min, fields: .metadata(metadataType: "-", payload: .empty)))
    }

    public enum Read: Sendable {
        case entries([Entry])
        /// For a stream of a whole scope: its next commits as WebSocket frames, ready to send.
        case frames(Frames)
        /// `after` is older than the ring: read the store. `oldest`: when the ring's oldest entry
        /// came in (nil while empty); a stream reading the store is at least that far behind.
        case behind(oldest: ContinuousClock.Instant?)
        /// Nothing after `after` yet.
        case upToDate
    }

    /// Consecutive `event` frames of one scope, as slices of a run's buffer (shared, not copied).
    public struct Frames: Sendable {
        public var buffers: [ByteBuffer] = []
        public var events = 0
        /// The `ingestSeq` the stream is at after sending them (runs of other scopes skipped).
        public var position: Int64
        /// When the feed took in the newest of them, for the delivery-lag metric.
        public var at: ContinuousClock.Instant
    }

    /// Commits in a row of one scope, framed once for every stream that takes the whole scope
    /// (all lanes, no filter). With 20 LIVE clients at 50,000 events/s, walking the feed event by
    /// event (an entry handed out, the selection checked, a header and a copy per event and
    /// client) was most of the server's streaming work; a stream now takes a run in one slice.
    /// A run is closed when the batch that filled it is in: a slice handed out keeps the buffer
    /// shared, and writing more into it would copy it whole.
    struct Run {
        let scopeId: String
        var seqs: [Int64] = []
        /// WebSocket text frames (`StreamFrameWriter.header` and the message), back to back.
        var buffer = ByteBuffer()
        /// Where each event's frame ends in `buffer`.
        var ends: [Int] = []
        var at: ContinuousClock.Instant = .now
        var open = true
    }

    let store: any EventStore
    let capacity: Int
    /// The most the ring holds in ``Entry/bytes``, and the framed runs in theirs; the oldest go
    /// first (at least one entry and one run stay).
    let byteBudget: Int
    let logger: Logger
    /// A circular buffer of up to `capacity` slots: `count` entries from `start`.
    private var ring: [Entry] = []
    private var start = 0
    private var count = 0
    private var ringBytes = 0
    /// The `ingestSeq` of the newest entry (or, while empty, of the last commit seen).
    public private(set) var head: Int64 = 0
    private var started = false
    private var filling = false
    /// Set when a fill was asked for during a fill (or published batches overflowed), which then
    /// reads once more.
    private var missed = false
    /// Published batches waiting for a predecessor, by their first `ingestSeq`.
    private var pending: [Int64: [(Int64, Event)]] = [:]
    static let maxPending = 16
    private var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    private var nextWaiter = 0
    /// Framed runs of the newest commits, in commit order, covering every entry since framing
    /// began. Kept only while whole-scope streams read them (``framingIdle`` after the last
    /// read, they are dropped), and for at most ``capacity`` events.
    private var runs: [Run] = []
    private var runEvents = 0
    private var runBytes = 0
    private var lastFramedRead: ContinuousClock.Instant?
    static let eventsPerRun = 1_024
    static let framingIdle = Duration.seconds(10)
    /// Where an event's message is encoded before it is framed into its run.
    private var scratch = [UInt8]()
    /// When a stream last read the feed or waited on it (nil: never). The feed keeps a tail
    /// only while streams use it: a hub that only takes sync batches spent 2.5% of the machine
    /// in a catch-up (perf) keeping 131,072 events that nobody read. Idle, it only follows the
    /// head.
    private var lastUse: ContinuousClock.Instant?
    static let idleAfter = Duration.seconds(10)

    public init(store: any EventStore, capacity: Int = 131_072, byteBudget: Int = 256 << 20, logger: Logger) {
        self.store = store
        self.capacity = capacity
        self.byteBudget = byteBudget
        self.logger = logger
        ring.reserveCapacity(capacity)
    }

    /// Takes the store's current head as the start of the tail.
    public func start() async throws(StoreError) {
        guard !started else { return }
        head = try await store.lastCommittedSeq()
        started = true
    }

    /// Up to `max` entries after `after`, in commit order; for a stream that takes every event
    /// of `wholeScope`, as frames when the runs cover them.
    public func read(after: Int64, max: Int, wholeScope: String? = nil) -> Read {
        lastUse = .now
        if let wholeScope {
            lastFramedRead = .now
            if let frames = frames(after: after, max: max, scope: wholeScope) { return .frames(frames) }
        }
        if after >= head { return .upToDate }
        guard count > 0, after >= ring[start].seq - 1 else { return .behind(oldest: count == 0 ? nil : ring[start].at) }
        // The first entry after `after` (seqs rise along the ring; retention may leave gaps).
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if ring[(start + mid) % ring.count].seq <= after { low = mid + 1 } else { high = mid }
        }
        let end = Swift.min(count, low + max)
        var out = [Entry]()
        out.reserveCapacity(end - low)
        for k in low..<end {
            let slot = (start + k) % ring.count
            var entry = ring[slot]
            if entry.message == nil {
                let encoded = Entry(seq: entry.seq, event: entry.event, message: ByteBuffer(bytes: Self.message(entry.event)), at: entry.at)
                ringBytes += encoded.bytes - entry.bytes
                entry = encoded
                ring[slot] = entry
            }
            out.append(entry)
        }
        return .entries(out)
    }

    /// The frames of the commits after `after`, whole runs up to about `max` events, or nil when
    /// the runs do not hold everything after `after` (or nothing came after it yet).
    private func frames(after: Int64, max: Int, scope: String) -> Frames? {
        guard after < head, let first = runs.first, after >= first.seqs[0] - 1 else { return nil }
        // The first run with a commit after `after`, then the first such commit in it.
        var low = 0
        var high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].seqs.last! <= after { low = mid + 1 } else { high = mid }
        }
        // The runs end at the head while there are any; this only guards that invariant.
        guard low < runs.count else { return nil }
        var out = Frames(position: after, at: runs[low].at)
        for k in low..<runs.count {
            if out.events >= max { break }
            let run = runs[k]
            var i = 0
            if k == low {
                var high = run.seqs.count
                while i < high {
                    let mid = (i + high) / 2
                    if run.seqs[mid] <= after { i = mid + 1 } else { high = mid }
                }
            }
            if run.scopeId == scope {
                let from = i == 0 ? 0 : run.ends[i - 1]
                out.buffers.append(run.buffer.getSlice(at: run.buffer.readerIndex + from, length: run.ends.last! - from)!)
                out.events += run.seqs.count - i
            }
            out.position = run.seqs.last!
            out.at = run.at
        }
        return out
    }

    /// Frames `entry` into the open run of its scope, or a new one; drops the oldest runs beyond
    /// the capacity or the byte budget (a run closes at a 16th of it, so that dropping whole runs
    /// keeps to the budget).
    private func frame(_ entry: Entry) {
        if runs.isEmpty || !runs[runs.count - 1].open || runs[runs.count - 1].scopeId != entry.event.scopeId
            || runs[runs.count - 1].seqs.count >= Self.eventsPerRun || runs[runs.count - 1].buffer.readableBytes >= byteBudget / 16 {
            if !runs.isEmpty { runs[runs.count - 1].open = false }
            runs.append(Run(scopeId: entry.event.scopeId))
        }
        scratch.removeAll(keepingCapacity: true)
        Self.message(entry.event, into: &scratch)
        let last = runs.count - 1
        StreamFrameWriter.header(scratch.count, into: &runs[last].buffer)
        runs[last].buffer.writeBytes(scratch)
        runs[last].seqs.append(entry.seq)
        runs[last].ends.append(runs[last].buffer.readableBytes)
        runs[last].at = entry.at
        runEvents += 1
        runBytes += StreamFrameWriter.headerBytes(scratch.count) + scratch.count
        while runEvents > capacity || runBytes > byteBudget, runs.count > 1 {
            let dropped = runs.removeFirst()
            runEvents -= dropped.seqs.count
            runBytes -= dropped.buffer.readableBytes
        }
    }

    /// Closes the open run (its batch is in) and stops framing when no stream read frames lately.
    private func sealRuns() {
        if !runs.isEmpty { runs[runs.count - 1].open = false }
        if let last = lastFramedRead, ContinuousClock.now - last > Self.framingIdle {
            runs.removeAll()
            runEvents = 0
            runBytes = 0
            lastFramedRead = nil
        }
    }

    /// Returns when the head passes `after`, or after `atMost` (so that callers can send
    /// heartbeats and notice their own commands and closes).
    ///
    /// The bound is the waiter's own, not a ticker's: at shutdown the services stop before the
    /// connections do, and a stream waiting for a tick that never came never noticed its
    /// client's close, which kept the server from stopping.
    public func waitForCommits(after: Int64, atMost: Duration = .milliseconds(250)) async {
        lastUse = .now
        if head > after { return }
        let id = nextWaiter
        nextWaiter += 1
        let timer = Task {
            // Cancelled once a commit woke the waiter first.
            guard (try? await Task.sleep(for: atMost)) != nil else { return }
            self.resume(id)
        }
        await withCheckedContinuation { waiters[id] = $0 }
        timer.cancel()
    }

    private func resume(_ id: Int) {
        waiters.removeValue(forKey: id)?.resume()
    }

    /// An append of this process has committed `events` with `seqs` (nil for duplicates).
    ///
    /// Concurrent appends can publish out of commit order; a batch that does not continue the
    /// tail waits here for its predecessors (a few batches at most), so that no ingest request
    /// ever reads the store. Anything that never arrives (another process's commit) is read by
    /// the next signalled or periodic fill, which also discards what it made stale.
    public func published(_ events: [Event], seqs: [Int64?]) async {
        guard started else { return }
        if isIdle {
            follow(seqs.lazy.compactMap { $0 }.max())
            return
        }
        var fresh = [(Int64, Event)]()
        for (event, seq) in zip(events, seqs) { if let seq, seq > head { fresh.append((seq, event)) } }
        guard !fresh.isEmpty else { return }
        fresh.sort { $0.0 < $1.0 }
        pending[fresh[0].0] = fresh
        // A fill in progress takes it when its read ends (it drains the pending batches).
        if !filling { drainPending() }
        if pending.count > Self.maxPending {
            pending.removeAll()
            if filling { missed = true } else { Task { await self.fill() } }
        }
    }

    /// Appends the waiting batches that now continue the tail, in order.
    private func drainPending() {
        var appended = false
        while let (first, batch) = pending.first(where: { $0.key <= head + 1 }) {
            pending.removeValue(forKey: first)
            for (seq, event) in batch where seq > head { append(Entry(seq: seq, event: event)) }
            appended = true
        }
        if appended { wakeAll() }
    }

    /// Reads whatever the store committed after the head (another process's appends, or a batch
    /// whose predecessor has not been published yet).
    public func fill() async {
        guard started else { return }
        if filling {
            missed = true
            return
        }
        filling = true
        defer { filling = false }
        do {
            if isIdle {
                follow(try await store.lastCommittedSeq())
                return
            }
            while true {
                missed = false
                // The counter first: reading the lanes by `ingestSeq` is far dearer (on
                // PostgreSQL a BRIN scan of the table's unsummarized tail), and most fills
                // (the periodic one, a burst of signals) find nothing missing.
                var rows = [CommittedEvent]()
                if try await store.lastCommittedSeq() > head {
                    rows = try await store.committed(after: head, limit: 2_000, maxBytes: byteBudget / 16)
                    for row in rows where row.seq > head {
                        append(Entry(seq: row.seq, event: row.event))
                    }
                    if !rows.isEmpty { wakeAll() }
                }
                pending = pending.filter { $0.value.last!.0 > head }
                drainPending()
                if rows.isEmpty && !missed { break }
            }
        } catch {
            // Cancelled reads at shutdown are not worth a warning.
            if !Task.isCancelled { logger.warning("stream feed cannot read the store", metadata: ["error": "\(error.message)"]) }
        }
    }

    /// The store signalled a commit of another process through `committed` (nil: unknown, as
    /// after a reconnect). The store is read only if the feed still lacks it after a moment, so
    /// that a burst of signals costs one read.
    public func signalled(_ committed: Int64?) async {
        if let committed, committed <= head { return }
        try? await Task.sleep(for: .milliseconds(20))
        if let committed, committed <= head { return }
        await fill()
    }

    /// No stream has used the feed for ``idleAfter``.
    private var isIdle: Bool { waiters.isEmpty && lastUse.map { ContinuousClock.now - $0 > Self.idleAfter } ?? true }

    /// As if ``idleAfter`` had passed since the last use: tests make the feed idle this way
    /// rather than by sleeping, which a loaded machine could stretch across the active parts.
    @_spi(Testing) public func forgetUse() {
        lastUse = nil
    }

    /// While idle: drops the tail and moves the head to `seq`. The ring never holds a gap this
    /// way: the next stream finds it empty, reads the store up to the head (`.behind`), and
    /// the ring then continues from the head, as after a start.
    private func follow(_ seq: Int64?) {
        if !ring.isEmpty {
            ring.removeAll(keepingCapacity: true)
            start = 0
            count = 0
            ringBytes = 0
        }
        pending.removeAll()
        if !runs.isEmpty {
            runs.removeAll()
            runEvents = 0
            runBytes = 0
        }
        lastFramedRead = nil
        if let seq, seq > head { head = seq }
    }

    private func append(_ entry: Entry) {
        if count == capacity { dropOldest() }
        let slot = (start + count) % capacity
        if slot == ring.count {
            ring.append(entry)
        } else {
            ring[slot] = entry
        }
        count += 1
        ringBytes += entry.bytes
        while ringBytes > byteBudget, count > 1 { dropOldest() }
        head = entry.seq
        if lastFramedRead != nil { frame(entry) }
    }

    private func dropOldest() {
        ringBytes -= ring[start].bytes
        ring[start] = Entry.dropped
        start = (start + 1) % ring.count
        count -= 1
    }

    /// Called once a batch of entries is in.
    private func wakeAll() {
        sealRuns()
        let waiting = waiters
        waiters.removeAll(keepingCapacity: true)
        for w in waiting.values { w.resume() }
    }

    static func message(_ event: Event) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(320)
        message(event, into: &out)
        return out
    }

    static func message(_ event: Event, into out: inout [UInt8]) {
        out.append(contentsOf: #"{"type":"event","event":"#.utf8)
        event.writeJSON(into: &out)
        out.append(UInt8(ascii: "}"))
    }
}

/// Keeps a ``CommitFeed`` current while the server runs: the store's commit signals (PostgreSQL
/// `LISTEN`) fill it at once, and a periodic check of the store's head covers any signal that was
/// lost.
public struct CommitFeedService: Service {
    let feed: CommitFeed
    let store: any EventStore
    let logger: Logger

    public init(feed: CommitFeed, store: any EventStore, logger: Logger) {
        self.feed = feed
        self.store = store
        self.logger = logger
    }

    public func run() async throws {
        let feed = feed
        let store = store
        do {
            // Everything here stops at the first sign of shutdown, including the wait for a
            // store that is still connecting (or that was refused, which stops the server).
            try await cancelWhenGracefulShutdown {
                while true {
                    do {
                        try await feed.start()
                        break
                    } catch {
                        try await Task.sleep(for: .milliseconds(500))
                    }
                }
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask {
                        // It reconnects by itself; it ends only when cancelled (or at once for a
                        // store no other process writes). The check below covers its absence.
                        try? await store.watchCommits { committed in Task { await feed.signalled(committed) } }
                    }
                    group.addTask {
                        while true {
                            try await Task.sleep(for: .seconds(1))
                            await feed.fill()
                        }
                    }
                }
            }
        } catch where Task.isCancelled || error is CancellationError {
            // Shut down (a listen that ends with its own error when cancelled included).
        }
    }
}
