import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import NovaCore
import Prometheus
import Synchronization

/// Commands and closes from the client's reading side, for the sending side to act on.
final class StreamControl: Sendable {
    struct State {
        var commands: [StreamCommand] = []
        var failure: (code: WebSocketErrorCode, message: String)?
        var closed = false
    }

    let state = Mutex(State())
    /// More pending commands than this is abuse, not use.
    static let maxPending = 64

    func post(_ command: StreamCommand) {
        state.withLock { s in
            if s.commands.count >= Self.maxPending {
                s.failure = s.failure ?? (.policyViolation, "message: more than \(Self.maxPending) commands waiting; slow down")
            } else {
                s.commands.append(command)
            }
        }
    }

    func fail(_ code: WebSocketErrorCode, _ message: String) {
        state.withLock { s in s.failure = s.failure ?? (code, message) }
    }

    func close() { state.withLock { $0.closed = true } }

    var hasNews: Bool { state.withLock { !$0.commands.isEmpty || $0.failure != nil || $0.closed } }

    func take() -> State {
        state.withLock { s in
            let taken = s
            s.commands.removeAll()
            return taken
        }
    }
}

/// One client's stream: REWIND reads the store in contract order by keyset pages, paced by
/// event-time deltas divided by `speed`, and hands over to LIVE at the head; LIVE sends every
/// later commit once, in commit order, from the shared ``CommitFeed`` or, when the client has
/// fallen behind it, from the store.
///
/// The handover has no gap and no repeat because the rewind reads a snapshot: only events with
/// `ingestSeq <= snapshot`. When its read runs out, the head is checked. Within a few thousand
/// commits of it, the stream is at the present: `caughtUp`, then LIVE after the snapshot (so
/// those commits come in commit order). Further behind, events committed since the snapshot
/// that order at or before what was already sent (late arrivals) are sent at once, and the rest
/// come through the ordered read of the new snapshot.
///
/// A rewind with `to` sends `end` once it has sent its range. When `to` is in the past, it reads
/// the range like a paged query. When `to` is still ahead, the range is not complete yet: the
/// rewind reads snapshots and runs on as LIVE (events before `to` only, no `caughtUp`, which the
/// contract keeps for rewinds without `to`) until the clock has passed `to`, no ingest request
/// received before `to` is still in flight, and every commit up to then has been sent.
struct StreamSession {
    enum Phase {
        /// `snapshot` nil: a rewind whose `to` has passed, read like a paged query, then `end`.
        case rewind(from: Timestamp, cursor: OrderingKey?, snapshot: Int64?)
        case live(position: Int64)
    }

    enum Step {
        case next
        case stop
    }

    let request: StreamRequest
    let store: any EventStore
    let feed: CommitFeed
    let control: StreamControl
    let outbound: WebSocketOutboundWriter
    /// Where the frames go: in batches, not one write each (see ``StreamFrameWriter``).
    var frames: StreamFrameWriter
    let metrics: NovaMetrics
    let inFlight: InFlightIngest
    /// Commits since the snapshot below which a rewind hands over to LIVE.
    let handOverDistance: Int
    /// The most event content a page read from the store holds (`server.maxPageBytes`).
    let pageBytes: Int
    var speed: Double
    var phase: Phase
    var paused = false
    var catchingUp = false
    /// A rewind with `to` that runs on as LIVE: the last commit it sends before `end`, fixed
    /// once `to` has passed.
    var endSeq: Int64?
    /// Pacing: the wall-clock instant at which the event time `time` is due.
    var anchor: (wall: ContinuousClock.Instant, time: Timestamp)?
    var lastSent = ContinuousClock.now
    /// Where an event's message is encoded before it is framed (its capacity kept).
    var scratch = [UInt8]()
    /// An unpaced rewind's next page, read while the current one is sent, so that the store and
    /// the socket work side by side (perf of a REWIND from PostgreSQL: the machine a fifth idle
    /// while each page was read only after the one before was sent). One page at most.
    var prefetched: (query: EventQuery, task: Task<EventPage, any Error>)?

    static let pageSize = 512
    static let fastPageSize = 4_096
    /// An unpaced rewind's pages: each costs PostgreSQL a plan over every daily partition, which
    /// at 4,096 events was a quarter of the time. Measured on PostgreSQL, 1,000,000 events,
    /// binaries alternating: 159,751 and 171,787 events/s at 4,096; 234,339 and 206,135 at 16,384.
    /// The byte bound (`server.maxPageBytes`) still ends a page of large events early.
    static let rewindPageSize = 16_384
    static let heartbeatEvery = Duration.seconds(5)

    init(
        request: StreamRequest, store: any EventStore, feed: CommitFeed, control: StreamControl, outbound: WebSocketOutboundWriter, frames: StreamFrameWriter,
        metrics: NovaMetrics, inFlight: InFlightIngest, handOverDistance: Int, pageBytes: Int
    ) async throws(StoreError) {
        self.handOverDistance = handOverDistance
        self.pageBytes = pageBytes
        self.request = request
        self.store = store
        self.feed = feed
        self.control = control
        self.outbound = outbound
        self.frames = frames
        self.metrics = metrics
        self.inFlight = inFlight
        speed = request.speed
        let head = try await store.lastCommittedSeq()
        phase = request.mode == .live ? .live(position: head) : .rewind(from: request.from, cursor: nil, snapshot: request.toHasPassed ? nil : head)
    }

    /// Streams until the client closes, the stream ends or fails. On return everything sent is
    /// written; on a throw it is handed to the channel, ahead of the failure's report.
    mutating func run() async throws {
        defer { prefetched?.task.cancel() }
        do {
            try await loop()
            try await frames.drain()
        } catch {
            try? await frames.flush()
            throw error
        }
    }

    private mutating func loop() async throws {
        if case .live(let position) = phase {
            // A LIVE stream is at the present from its first moment; saying so tells the client
            // from when on it misses nothing. Sent at once: the first step may wait for commits
            // (up to a quarter second idle, far longer on a loaded machine, where clients that
            // waited for it were seen to give up).
            try await send(Self.caughtUp(position))
            try await frames.flush()
        }
        while true {
            if try await applyControl() == .stop { return }
            if paused {
                try await heartbeatIfIdle()
                try await Task.sleep(for: .milliseconds(50))
                continue
            }
            let step: Step
            switch phase {
            case .rewind(let from, let cursor, let snapshot):
                step = try await rewind(from: from, cursor: cursor, snapshot: snapshot)
            case .live(let position):
                if try await reachedEnd(at: position) {
                    try await end()
                    return
                }
                try await live(after: position)
                step = .next
            }
            if step == .stop { return }
            try await frames.flush()
        }
    }

    /// Acts on what the client sent; `.stop` after a failure (reported) or the client's close.
    mutating func applyControl() async throws -> Step {
        let taken = control.take()
        if let failure = taken.failure {
            try? await frames.flush()
            await StreamFailure(code: failure.code, message: failure.message).report(on: outbound)
            return .stop
        }
        if taken.closed { return .stop }
        for command in taken.commands {
            switch command {
            case .pause:
                paused = true
            case .resume:
                paused = false
                anchor = nil
            case .speed(let value):
                speed = value
                anchor = nil
            case .seek(let time):
                let head = try await storeCall { try await store.lastCommittedSeq() }
                phase = .rewind(from: time, cursor: nil, snapshot: request.toHasPassed ? nil : head)
                anchor = nil
                catchingUp = false
                endSeq = nil
            }
        }
        return .next
    }

    /// One page of the rewind, or the check at its end.
    mutating func rewind(from: Timestamp, cursor: OrderingKey?, snapshot: Int64?) async throws -> Step {
        // Unpaced, larger pages: fewer round trips; a page is the most a client holds anyway.
        let query = request.query(from: from, after: cursor, snapshot: snapshot, limit: speed == 0 ? Self.rewindPageSize : Self.pageSize, maxBytes: pageBytes)
        let page: EventPage
        if let ahead = prefetched, ahead.query == query {
            page = try await storeCall { try await ahead.task.value }
        } else {
            prefetched?.task.cancel()
            let store = store
            page = try await storeCall { try await store.page(query) }
        }
        prefetched = nil
        if speed == 0, page.next != nil, let last = page.events.last {
            let next = request.query(from: from, after: last.orderingKey(request.timebase), snapshot: snapshot, limit: Self.rewindPageSize, maxBytes: pageBytes)
            let store = store
            prefetched = (next, Task { try await store.page(next) })
        }
        // By index, and the position kept once per page, so that neither an event nor its
        // ordering key is copied per event.
        var sent = 0
        for k in page.events.indices {
            guard try await pace(page.events[k]) else { break }
            try await send(event: page.events[k])
            sent += 1
        }
        metrics.streamEventsSent.increment(by: Int64(sent))
        let cursor = sent > 0 ? page.events[sent - 1].orderingKey(request.timebase) : cursor
        phase = .rewind(from: from, cursor: cursor, snapshot: snapshot)
        if sent < page.events.count || page.next != nil { return .next }
        guard let snapshot else {
            try await end()
            return .stop
        }
        // At the snapshot's end. Close enough to the head (under continuous ingest it is never
        // exactly there), the commits since the snapshot follow as LIVE, in commit order.
        let head = try await storeCall { try await store.lastCommittedSeq() }
        let closed = rangeIsClosed
        if !closed, head - snapshot <= Int64(handOverDistance) {
            if request.to == nil { try await send(Self.caughtUp(snapshot)) }
            phase = .live(position: snapshot)
            return .next
        }
        try await sendLateArrivals(from: from, cursor: cursor, after: snapshot, through: head)
        // Once `to` has passed, the rest of the range is read without a snapshot, then `end`.
        phase = .rewind(from: from, cursor: cursor, snapshot: closed ? nil : head)
        return .next
    }

    /// Commits after `snapshot` up to `head` that order at or before the cursor would never be
    /// reached by the ordered read: they are sent now. The others come with the next read.
    mutating func sendLateArrivals(from: Timestamp, cursor: OrderingKey?, after snapshot: Int64, through head: Int64) async throws {
        guard let cursor else { return }
        var position = snapshot
        while position < head {
            let rows = try await committed(after: position)
            guard let last = rows.last else { return }
            for row in rows where row.seq <= head && request.selects(row.event) && request.endsAfter(row.event) {
                let event = row.event
                guard event.time(request.timebase) >= from, event.orderingKey(request.timebase) <= cursor else { continue }
                if let message = row.message {
                    try await send(message)
                } else {
                    try await send(event: event)
                }
                metrics.streamEventsSent.increment()
            }
            position = last.seq
        }
    }

    /// Whether a rewind with `to` that runs on as LIVE has sent all it will: the clock has passed
    /// `to`, no ingest request received before it is still in flight (its events may order
    /// before `to`), and every commit up to the head at that moment is sent.
    mutating func reachedEnd(at position: Int64) async throws -> Bool {
        guard request.to != nil else { return false }
        if endSeq == nil, rangeIsClosed {
            endSeq = try await storeCall { try await store.lastCommittedSeq() }
        }
        guard let endSeq else { return false }
        return position >= endSeq
    }

    /// Whether nothing more can enter the range of a rewind with `to`: the clock has passed `to`,
    /// and no ingest request received before it is still in flight.
    var rangeIsClosed: Bool {
        guard let to = request.to, request.toHasPassed else { return false }
        guard let oldest = inFlight.oldest else { return true }
        return oldest >= to
    }

    /// `end`, then a normal close.
    mutating func end() async throws {
        try await send(Array(#"{"type":"end"}"#.utf8))
        // Flushed, not drained: the close frame follows `end` at once, as a client that stops
        // reading at `end` expects (the batch is on the event loop first either way).
        try await frames.flush()
        try await outbound.close(.normalClosure, reason: nil)
    }

    /// Sends what was committed after `position`, or waits for it. A stream whose scope or lanes
    /// see none of a busy store's commits reads on without ever being up to date, so its
    /// heartbeat is checked before every step, not only while it waits.
    mutating func live(after position: Int64) async throws {
        try await heartbeatIfIdle()
        let wholeScope = request.takesWholeScope && request.to == nil ? request.scopeId : nil
        switch await feed.read(after: position, max: wholeScope == nil ? Self.pageSize : Self.fastPageSize, wholeScope: wholeScope) {
        case .frames(let framed):
            catchingUp = false
            for buffer in framed.buffers { try await frames.append(framed: buffer) }
            if framed.events > 0 {
                lastSent = .now
                metrics.streamEventsSent.increment(by: Int64(framed.events))
                metrics.streamLag.record(ContinuousClock.now - framed.at)
            }
            phase = .live(position: framed.position)
        case .entries(let entries):
            catchingUp = false
            var sent = 0
            for entry in entries where request.selects(entry.event) && request.endsAfter(entry.event) {
                try await frames.append(entry.message!)
                sent += 1
            }
            // The clock once per page, not per event.
            if sent > 0 { lastSent = .now }
            metrics.streamEventsSent.increment(by: Int64(sent))
            if let last = entries.last {
                metrics.streamLag.record(ContinuousClock.now - last.at)
                phase = .live(position: last.seq)
            }
        case .behind(let oldest):
            if !catchingUp {
                catchingUp = true
                metrics.streamCatchUps.increment()
            }
            // Large pages: behind the feed, each client reads the store for itself, and on
            // PostgreSQL pages of 512 kept 20 clients behind for over a minute where pages of
            // 4,096 caught them up (bench stream at 50,000 events/s, alternating binaries).
            let rows = try await storeCall { try await store.committed(after: position, limit: Self.fastPageSize, maxBytes: pageBytes) }
            var sent = 0
            for row in rows where request.selects(row.event) && request.endsAfter(row.event) {
                try await send(event: row.event)
                sent += 1
            }
            metrics.streamEventsSent.increment(by: Int64(sent))
            if let last = rows.last {
                // Its commit time is not kept in the store; it is older than the feed's oldest.
                if sent > 0, let oldest { metrics.streamLag.record(ContinuousClock.now - oldest) }
                phase = .live(position: last.seq)
            } else {
                // Nothing readable yet past a position the feed has left behind: do not spin.
                try await Task.sleep(for: .milliseconds(50))
            }
        case .upToDate:
            await feed.waitForCommits(after: position)
        }
    }

    /// Commits after `position` from the feed when it still holds them, else from the store.
    func committed(after position: Int64) async throws -> [(seq: Int64, event: Event, message: ByteBuffer?)] {
        if case .entries(let entries) = await feed.read(after: position, max: Self.pageSize) {
            return entries.map { ($0.seq, $0.event, $0.message) }
        }
        return try await storeCall { try await store.committed(after: position, limit: Self.pageSize, maxBytes: pageBytes) }.map { ($0.seq, $0.event, nil) }
    }

    /// Waits until `event` is due at the current speed. False when a command or a close arrived
    /// first (the event is then not sent; the loop acts on the command and reads again).
    mutating func pace(_ event: Event) async throws -> Bool {
        guard speed > 0 else { return !control.hasNews }
        let time = event.time(request.timebase)
        guard let anchor else {
            anchor = (ContinuousClock.now, time)
            return !control.hasNews
        }
        let due = anchor.wall + .microseconds(Double(time.microseconds - anchor.time.microseconds) / speed)
        while true {
            if control.hasNews { return false }
            let now = ContinuousClock.now
            if now >= due { return true }
            try await heartbeatIfIdle()
            try await frames.flush()
            try await Task.sleep(for: min(due - now, .milliseconds(50)))
        }
    }

    mutating func heartbeatIfIdle() async throws {
        if ContinuousClock.now - lastSent >= Self.heartbeatEvery {
            try await send(Array(#"{"type":"heartbeat","at":"\#(Timestamp.now())"}"#.utf8))
            try await frames.flush()
        }
    }

    /// Queues one text frame; it leaves with its batch (at the end of the step at the latest).
    mutating func send(_ bytes: [UInt8]) async throws {
        try await frames.append(bytes)
        lastSent = .now
    }

    /// An `event` message this session encodes itself (not from the feed), in its scratch buffer.
    mutating func send(event: Event) async throws {
        scratch.removeAll(keepingCapacity: true)
        CommitFeed.message(event, into: &scratch)
        try await send(scratch)
    }

    mutating func send(_ buffer: ByteBuffer) async throws {
        try await frames.append(buffer)
        lastSent = .now
    }

    /// A store failure ends the stream with an `error` message (the client reconnects and seeks).
    func storeCall<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as StoreError {
            throw StreamFailure(code: .unexpectedServerError, message: "store: \(error.message)")
        }
    }

    /// `caughtUp` with the time and the commit position after which LIVE continues.
    static func caughtUp(_ position: Int64) -> [UInt8] {
        Array(#"{"type":"caughtUp","at":"\#(Timestamp.now())","ingestSeq":\#(position)}"#.utf8)
    }

}

/// Why a stream ends early, as the client is told: an `error` message, then a close with `code`.
struct StreamFailure: Error {
    var code: WebSocketErrorCode
    var message: String

    /// Sends the `error` message and closes; a connection already gone is not an error here.
    func report(on outbound: WebSocketOutboundWriter) async {
        var out = Array(#"{"type":"error","error":"#.utf8)
        CanonicalJSON.writeString(message, into: &out)
        out.append(UInt8(ascii: "}"))
        try? await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(bytes: out))))
        try? await outbound.close(code, reason: String(message.prefix(120)))
    }
}
