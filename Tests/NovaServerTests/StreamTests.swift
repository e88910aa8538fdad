import Foundation
import HummingbirdTesting
import HummingbirdWSClient
import NIOCore
import NIOWebSocket
import NovaCore
@_spi(Testing) import NovaServer
import NovaTestSupport
import Synchronization
import Testing

/// `GET /v1/stream` over real WebSocket connections on loopback, on every backend.
///
/// The time limit is a backstop behind each test's own bounded waits, which name what did not
/// happen. Four minutes, not two: early in a full run, when most suites share the test
/// process's two threads, one post of 205 events took 3 to 15 s in the twenty-client test (0.2 s
/// alone), whose case then took 93 to 111 s.
@Suite(.timeLimit(.minutes(4))) struct StreamTests {
    static let t0 = Timestamp(microseconds: 1_780_000_000_000_000)

    /// `count` raw frames of scope `scope`, `stepMillis` apart from `start`.
    static func frames(_ count: Int, scope: String = "s", from start: Timestamp = t0, stepMillis: Int64 = 100, connection: String = "c") -> [Event] {
        (0..<count).map { i in
            let t = Timestamp(microseconds: start.microseconds + Int64(i) * stepMillis * 1_000)
            return Event(scopeId: scope, sourceTruthTime: t, canonicalTruthTime: t, fields: .raw(connectionId: connection, sequence: Int64(i), bytes: [UInt8(i & 0xff)]))
        }
    }

    static func ids(_ events: [Event]) -> [String] { events.map(\.eventId.hex) }

    /// The events of `scope` committed after `seq`, in commit order, as the store has them.
    static func committedIds(_ store: any EventStore, scope: String, after seq: Int64 = 0) async throws -> [String] {
        var out = [String]()
        var position = seq
        while true {
            let rows = try await store.committed(after: position, limit: 1_000)
            guard let last = rows.last else { break }
            out += rows.filter { $0.event.scopeId == scope }.map(\.event.eventId.hex)
            position = last.seq
        }
        return out
    }

    /// Frames are written in batches with their headers encoded by the server itself: messages
    /// of each length encoding of RFC 6455 (7-bit `end`, 16-bit, 64-bit), one larger than a whole
    /// batch, arrive whole and in order.
    @Test(arguments: Backend.allCases)
    func messagesOfEveryFrameLengthArriveWhole(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let sizes = [1, 200, 70_000, 400_000, 3]
            let events = sizes.enumerated().map { i, n in
                let t = Timestamp(microseconds: Self.t0.microseconds + Int64(i) * 1_000)
                return Event(scopeId: "s", sourceTruthTime: t, canonicalTruthTime: t, fields: .raw(
                    connectionId: "c", sequence: Int64(i), bytes: (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }))
            }
            try await client.ingest(events)
            let port = try #require(client.port)
            let to = Timestamp(microseconds: Self.t0.microseconds + 1_000_000)
            let close = try await withStream(port: port, query: "scope=s&mode=rewind&from=\(Self.t0)&to=\(to)&speed=0") { stream in
                let sent = try await stream.wait(forType: "end").filter { $0.type == "event" }
                #expect(sent.compactMap(\.eventId) == Self.ids(events))
                for (message, event) in zip(sent, events) {
                    guard case .raw(_, _, let bytes) = event.fields else { continue }
                    #expect(message.json["event"]?["bytes"]?.stringValue == Data(bytes).base64EncodedString(), "\(bytes.count) bytes")
                }
            }
            #expect(close?.closeCode == .normalClosure)
        }
    }

    @Test(arguments: Backend.allCases)
    func rewindAtSpeedZeroIsTheOrderedQueryThenCaughtUpThenLive(backend: Backend) async throws {
        try await withRecorder(backend) { client, store, metrics in
            var random = RandomEvents(seed: 5, scopes: ["site-a", "site-b"])
            try await client.ingest(random.events(400))
            let expected = try await store.allPages(EventQuery(scopeId: "site-a", range: Timestamp.min..<Timestamp.endOfTime, limit: 1_000)).events
            let port = try #require(client.port)
            try await withStream(port: port, query: "scope=site-a&mode=rewind&from=1970-01-01T00:00:00Z&speed=0") { stream in
                let first = try await stream.wait(forType: "caughtUp")
                #expect(first.compactMap(\.eventId) == Self.ids(expected))
                #expect(first.last?.json["at"]?.stringValue != nil)
                let handover = try #require(first.last?.json["ingestSeq"].flatMap { if case .number(let n) = $0 { n.int64 } else { nil } })
                // Live: later commits, late ones (old times) included, in commit order, once.
                var later = RandomEvents(seed: 6, scopes: ["site-a", "site-b"])
                for _ in 0..<4 { try await client.ingest(later.events(30)) }
                let live = try await Self.committedIds(store, scope: "site-a", after: handover)
                #expect(!live.isEmpty)
                let all = try await stream.wait(forEvents: expected.count + live.count)
                try await Task.sleep(for: .milliseconds(300))
                #expect(stream.eventIds == Self.ids(expected) + live)
                #expect(all.count { $0.type == "caughtUp" } == 1)
                let exposition = String(decoding: metrics.exposition(), as: UTF8.self)
                #expect(exposition.contains("nova_stream_clients 1"), "one stream open")
                #expect(exposition.contains("nova_stream_events_sent_total \(expected.count + live.count)"), "\(exposition)")
                #expect(exposition.contains("nova_stream_lag_seconds_count") && !exposition.contains("nova_stream_lag_seconds_count 0\n"), "live sends record their lag")
            }
        }
    }

    /// Under continuous ingest the head moves on while the rewind reads; with a small hand-over
    /// distance the rewind refreshes its snapshot repeatedly (late events included) before it
    /// hands over, and every event arrives exactly once.
    @Test(arguments: Backend.allCases)
    func rewindCatchesUpUnderContinuousIngest(backend: Backend) async throws {
        try await withRecorder(backend, handOverDistance: 20) { client, store, _ in
            try await client.ingest(Self.frames(3_000, stepMillis: 1))
            let port = try #require(client.port)
            let writing = TestCounter()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for b in 1...30 {
                        try await client.ingest(Self.frames(200, from: Timestamp(microseconds: Self.t0.microseconds + Int64(b) * 10_000_000), stepMillis: 1, connection: "w"))
                        // Late events too: times before everything the rewind has sent.
                        try await client.ingest(Self.frames(5, from: Timestamp(microseconds: Self.t0.microseconds - Int64(b) * 1_000_000), connection: "late\(b)"))
                    }
                    writing.add()
                }
                try await withStream(port: port, query: "scope=s&mode=rewind&from=1970-01-01T00:00:00Z&speed=0") { stream in
                    try await stream.wait(forType: "caughtUp", timeout: .seconds(60))
                    while writing.value == 0 { try await Task.sleep(for: .milliseconds(20)) }
                    let all = try await Self.committedIds(store, scope: "s")
                    try await stream.wait(forEvents: all.count, timeout: .seconds(60))
                    try await Task.sleep(for: .milliseconds(300))
                    #expect(stream.eventIds.count == all.count, "no event twice")
                    #expect(Set(stream.eventIds) == Set(all), "no event missing")
                    #expect(stream.messages.count { $0.type == "caughtUp" } == 1)
                }
                try await group.waitForAll()
            }
        }
    }

    @Test(arguments: Backend.allCases)
    func pacedRewindTakesEventTimeOverSpeedAndEnds(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let events = Self.frames(51)
            try await client.ingest(events)
            let port = try #require(client.port)
            // 5 s of events (t0 ..< t0+5 s) at speed 5: about 1 s. Pacing only waits, so a rewind
            // can never end early, but a stall of the loaded machine (the whole suite shares two
            // cores) can make it end late. So every attempt must be complete, ordered and no
            // faster than 0.98 s, and the best of up to three must beat what speed 1 allows (4.9 s):
            // a stall delays one attempt, an ignored speed fails them all.
            var attempts: [String] = []
            for _ in 1...3 {
                let opened = ContinuousClock.now
                let firstToEnd = Mutex<Duration?>(nil)
                let close = try await withStream(port: port, query: "scope=s&mode=rewind&from=\(Self.t0)&to=\(Timestamp(microseconds: Self.t0.microseconds + 5_000_000))&speed=5") { stream in
                    let messages = try await stream.wait(forType: "end")
                    let sent = messages.filter { $0.type == "event" }
                    #expect(sent.compactMap(\.eventId) == Self.ids(Array(events.prefix(50))))
                    let took = messages.last!.at - opened
                    #expect(took >= .milliseconds(980), "paced too fast: \(took)")
                    firstToEnd.withLock { $0 = messages.last!.at - sent.first!.at }
                }
                #expect(close?.closeCode == .normalClosure)
                let measured = try #require(firstToEnd.withLock { $0 })
                if measured < .milliseconds(4_800) { return }
                attempts.append("\(measured)")
            }
            Issue.record("paced as if at speed 1: from the first event to the end took \(attempts.joined(separator: ", ")) in three attempts")
        }
    }

    /// A rewind whose `to` is still ahead has not reached it at the head: it runs on as LIVE
    /// (events before `to` only, no `caughtUp`) and ends once the clock has passed `to`.
    @Test(arguments: Backend.allCases)
    func aRewindToTheFutureRunsOnLiveUntilToThenEnds(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let now = Timestamp.now()
            let clockAtNow = ContinuousClock.now
            let past = Self.frames(5, from: Timestamp(microseconds: now.microseconds - 5_000_000), connection: "past")
            try await client.ingest(past)
            let port = try #require(client.port)
            // Far enough ahead that the events below are in before it, even early in a full run
            // on two loaded cores (3 s was not: the clock passed `to` first, rightly ending the
            // stream without them).
            let to = Timestamp(microseconds: now.microseconds + 8_000_000)
            let close = try await withStream(port: port, query: "scope=s&mode=rewind&from=\(Timestamp(microseconds: now.microseconds - 60_000_000))&to=\(to)&speed=0") { stream in
                try await stream.wait(forEvents: 5)
                let during = Self.frames(3, from: Timestamp(microseconds: now.microseconds + 1_000_000), connection: "during")
                let beyond = Self.frames(2, from: Timestamp(microseconds: to.microseconds + 1_000_000), connection: "beyond")
                try await client.ingest(during + beyond)
                let ingestedBeforeTo = Timestamp.now() < to
                let messages = try await stream.wait(forType: "end", timeout: .seconds(60))
                if ingestedBeforeTo {
                    #expect(messages.compactMap(\.eventId) == Self.ids(past + during), "the range's events, and only those")
                } else {
                    // Committed after `to`: whether they come depends on when the stream saw the
                    // clock pass it; never anything beyond `to`, nothing twice.
                    let got = messages.compactMap(\.eventId)
                    #expect(Array(got.prefix(5)) == Self.ids(past) && Set(got).isSubset(of: Self.ids(past + during)) && Set(got).count == got.count, "\(got)")
                }
                #expect(!messages.contains { $0.type == "caughtUp" }, "caughtUp is for rewinds without to")
                let ended = try #require(messages.last)
                // Two clocks: a little slack.
                #expect(ended.at - clockAtNow >= .milliseconds(7_950), "end came before to: \(ended.at - clockAtNow) after opening")
            }
            #expect(close?.closeCode == .normalClosure)
        }
    }

    @Test(arguments: Backend.allCases)
    func pauseResumeSpeedAndSeekKeepOrderAndCompleteness(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let events = Self.frames(60)
            try await client.ingest(events)
            let port = try #require(client.port)
            try await withStream(port: port, query: "scope=s&mode=rewind&from=\(Self.t0)&speed=1") { stream in
                try await stream.wait(forEvents: 5)
                try await stream.send(#"{"type":"pause"}"#)
                // Events already on their way still arrive; then nothing does, and after 5 s
                // of silence the server sends a heartbeat (timing-free proof of the pause).
                try await stream.wait(forType: "heartbeat")
                let paused = stream.eventIds.count
                try await Task.sleep(for: .milliseconds(700))
                #expect(stream.eventIds.count == paused, "events arrived while paused")
                #expect(paused < 60)
                try await stream.send(#"{"type":"speed","value":0}"#)
                try await stream.send(#"{"type":"resume"}"#)
                try await stream.wait(forType: "caughtUp")
                #expect(stream.eventIds == Self.ids(events))

                // Seek back 3 s: the rest again, in order, then the present again.
                try await stream.send(#"{"type":"seek","to":"\#(Timestamp(microseconds: Self.t0.microseconds + 3_000_000))"}"#)
                try await stream.wait(forType: "caughtUp", count: 2)
                #expect(stream.eventIds == Self.ids(events) + Self.ids(Array(events[30...])))

                // Paused while live: nothing is sent, nothing is lost.
                try await stream.send(#"{"type":"pause"}"#)
                try await stream.wait(forType: "heartbeat", count: 2)
                let more = Self.frames(10, from: Timestamp(microseconds: Self.t0.microseconds + 60_000_000))
                try await client.ingest(more)
                try await Task.sleep(for: .milliseconds(500))
                #expect(stream.eventIds.count == 90)
                let resumedAt = ContinuousClock.now
                try await stream.send(#"{"type":"resume"}"#)
                let all = try await stream.wait(forEvents: 100)
                #expect(stream.eventIds.suffix(10) == Self.ids(more)[...])
                #expect(all.filter { $0.type == "event" }.suffix(10).allSatisfy { $0.at >= resumedAt })
            }
        }
    }

    @Test(arguments: Backend.allCases)
    func speedChangesMidRewind(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let events = Self.frames(100)
            try await client.ingest(events)
            let port = try #require(client.port)
            // At speed 0.1 the rest would take at least 96 s (pacing only ever waits); after three
            // events (2 s) it runs at speed 1000. The margin is wide, so a loaded machine cannot
            // make an applied change look ignored.
            try await withStream(port: port, query: "scope=s&mode=rewind&from=\(Self.t0)&to=\(Timestamp(microseconds: Self.t0.microseconds + 10_000_000))&speed=0.1") { stream in
                let start = try await stream.wait(forEvents: 3)
                try await stream.send(#"{"type":"speed","value":1000}"#)
                let all = try await stream.wait(forType: "end", timeout: .seconds(60))
                #expect(stream.eventIds == Self.ids(events))
                let took = all.last!.at - start.first!.at
                #expect(took < .seconds(40), "speed change ignored: \(took)")
            }
        }
    }

    /// The feed's framed runs, which whole-scope LIVE streams send as they are, hold exactly the
    /// `event` messages of their scope after any position: across runs split by scope, by batch
    /// and by size, from framing's first read on, and not before it.
    @Test func framedRunsHoldTheScopesMessagesAfterEveryPosition() async throws {
        let (store, cleanup) = try await Backend.sqlite.makeStore()
        do {
            try await checkFramedRuns(store)
        } catch {
            await cleanup()
            throw error
        }
        await cleanup()
    }

    private func checkFramedRuns(_ store: any EventStore) async throws {
        let feed = CommitFeed(store: store, capacity: 20_000, logger: quietLogger)
        try await feed.start()
        var seq: Int64 = 0
        var committed = [(seq: Int64, event: Event)]()
        func publish(_ events: [Event]) async {
            let seqs = events.indices.map { seq + 1 + Int64($0) }
            seq += Int64(events.count)
            committed += zip(seqs, events).map { ($0, $1) }
            await feed.published(events, seqs: seqs)
        }
        // A stream arrives (a feed nobody uses keeps no tail), before any whole-scope read:
        // there are no runs, and such a stream is served entry by entry.
        _ = await feed.read(after: 0, max: 4_096)
        await publish(Self.frames(300, scope: "a", connection: "early"))
        guard case .entries = await feed.read(after: 0, max: 4_096, wholeScope: "a") else {
            Issue.record("frames before framing began")
            return
        }
        let framingFrom = seq
        for b in 0..<5 {
            let start = Timestamp(microseconds: Self.t0.microseconds + Int64(b) * 10_000_000)
            var batch = Self.frames(1_500, scope: "a", from: start, connection: "a\(b)") + Self.frames(40, scope: "b", from: start, connection: "b\(b)")
            for k in 0..<30 { batch.append(Self.frames(1, scope: k % 2 == 0 ? "a" : "b", from: start, connection: "m\(b)-\(k)")[0]) }
            await publish(batch)
        }
        let expectedAll = committed.filter { $0.event.scopeId == "a" }.map { row in
            var out = Array(#"{"type":"event","event":"#.utf8)
            row.event.writeJSON(into: &out)
            return (seq: row.seq, message: String(decoding: out + [UInt8(ascii: "}")], as: UTF8.self))
        }
        // Run edges (1,024 events at most; a batch's 1,500 then 40 of the other scope), then more.
        let edges = [0, 1, 1_023, 1_024, 1_025, 1_499, 1_500, 1_540, 1_541].map { framingFrom + Int64($0) }
        for from in edges + Array(stride(from: framingFrom + 1_600, to: seq, by: 331)) + [seq - 1] {
            var position = from
            var messages = [String]()
            while case .frames(let framed) = await feed.read(after: position, max: 4_096, wholeScope: "a") {
                for buffer in framed.buffers { messages += try Self.textFrames(buffer) }
                position = framed.position
            }
            let expected = expectedAll.filter { $0.seq > from }.map(\.message)
            #expect(position == seq, "from \(from)")
            // Compared whole, reported by counts (the messages themselves would flood the log).
            let same = messages == expected
            #expect(same, "from \(from): \(messages.count) frames, \(expected.count) expected")
        }
        // A stream of the other scope skips the first scope's runs and gets its own.
        var position = framingFrom
        var count = 0
        while case .frames(let framed) = await feed.read(after: position, max: 100, wholeScope: "b") {
            for buffer in framed.buffers { count += try Self.textFrames(buffer).count }
            position = framed.position
        }
        #expect(count == 5 * 55)
    }

    /// A feed nobody reads drops its tail and only follows the head; the next stream gets no
    /// entry across the commits it skipped (it reads them from the store), and the tail then
    /// continues from the head.
    @Test func anIdleFeedFollowsTheHeadAndNeverSkipsACommit() async throws {
        let (store, cleanup) = try await Backend.sqlite.makeStore()
        let feed = CommitFeed(store: store, capacity: 20_000, logger: quietLogger)
        try await feed.start()
        func publish(_ seqs: ClosedRange<Int64>, _ connection: String) async {
            await feed.published(Self.frames(seqs.count, scope: "a", connection: connection), seqs: Array(seqs))
        }
        /// What a read answered, with the seqs of its entries: comparable in one `#expect`.
        func read(after: Int64) async -> String {
            switch await feed.read(after: after, max: 4_096) {
            case .entries(let entries): "entries \(entries.first?.seq ?? 0)...\(entries.last?.seq ?? 0) (\(entries.count))"
            case .frames: "frames"
            case .behind: "behind"
            case .upToDate: "upToDate"
            }
        }
        // Nobody has used it yet: idle from the start.
        await publish(1...100, "zero")
        #expect(await read(after: 100) == "upToDate")
        #expect(await read(after: 0) == "behind", "a feed nobody used holds a tail")
        await publish(101...200, "first")
        #expect(await read(after: 100) == "entries 101...200 (100)", "a feed in use holds its tail")
        await feed.forgetUse()
        // Idle: batches (here out of commit order) only move the head.
        await publish(301...400, "third")
        await publish(201...300, "second")
        #expect(await feed.head == 400)
        for after: Int64 in [0, 100, 200, 250, 399] {
            #expect(await read(after: after) == "behind", "after \(after): the idle feed's skipped commits are read from the store")
        }
        #expect(await read(after: 400) == "upToDate")
        // In use again: the tail continues from the head.
        await publish(401...450, "fourth")
        #expect(await read(after: 400) == "entries 401...450 (50)", "the feed in use again holds its tail")
        #expect(await read(after: 399) == "behind", "the tail begins at the head it followed while idle")
        await cleanup()
    }

    /// The tail is bounded by bytes as well as by count: with events of 10 KB and a budget of
    /// 100 KB it holds the newest nine, and whole-scope frames hold about as much.
    @Test func theFeedsTailIsBoundedByBytes() async throws {
        let (store, cleanup) = try await Backend.sqlite.makeStore()
        let feed = CommitFeed(store: store, capacity: 20_000, byteBudget: 100_000, logger: quietLogger)
        try await feed.start()
        _ = await feed.read(after: 0, max: 10, wholeScope: "a")  // in use, and framing, from now on
        let large = (0..<50).map { i in
            let t = Timestamp(microseconds: Self.t0.microseconds + Int64(i) * 1_000)
            return Event(scopeId: "a", sourceTruthTime: t, canonicalTruthTime: t, fields: .raw(connectionId: "c", sequence: Int64(i), bytes: [UInt8](repeating: UInt8(i), count: 10_000)))
        }
        await feed.published(large, seqs: Array(1...50))
        guard case .entries(let kept) = await feed.read(after: 41, max: 4_096) else { Issue.record("the newest nine are kept"); return }
        #expect(kept.map(\.seq) == Array(42...50))
        guard case .behind = await feed.read(after: 40, max: 4_096) else { Issue.record("the tenth newest is dropped"); return }
        // Frames of about 13.4 KB (base64), each in a run of its own (a run closes at a 16th of
        // the budget): the newest seven fit in 100 KB.
        guard case .frames(let frames) = await feed.read(after: 43, max: 4_096, wholeScope: "a") else { Issue.record("frames of the newest seven"); return }
        #expect(frames.events == 7 && frames.position == 50)
        guard case .entries = await feed.read(after: 42, max: 4_096, wholeScope: "a") else { Issue.record("the eighth newest is no longer framed"); return }
        await cleanup()
    }

    /// The payloads of unmasked text frames, back to back (RFC 6455, 5.2).
    static func textFrames(_ buffer: ByteBuffer) throws -> [String] {
        var b = buffer
        var out = [String]()
        struct Cut: Error {}
        while b.readableBytes > 0 {
            guard let head = b.readInteger(as: UInt8.self), var length = b.readInteger(as: UInt8.self).map(Int.init) else { throw Cut() }
            #expect(head == 0x81)
            if length == 126 { length = Int(b.readInteger(as: UInt16.self) ?? 0) }
            if length == 127 { length = Int(b.readInteger(as: UInt64.self) ?? 0) }
            guard let text = b.readString(length: length) else { throw Cut() }
            out.append(text)
        }
        return out
    }

    /// `batches` batches of `perBatch` frames of scope `load`, one second apart, posted by two
    /// concurrent writers, so that commit order is not simply posting order; each batch also
    /// holds 5 frames of scope `other`, which streams of `load` must not deliver.
    static func ingestFromTwoWriters(_ client: some TestClientProtocol, batches: Int, perBatch: Int) async throws {
        try await withThrowingTaskGroup(of: Void.self) { writers in
            for w in 0..<2 {
                writers.addTask {
                    for b in stride(from: w, to: batches, by: 2) {
                        let start = Timestamp(microseconds: t0.microseconds + Int64(b) * 1_000_000)
                        try await client.ingest(frames(perBatch, scope: "load", from: start, stepMillis: 1, connection: "w\(w)")
                            + frames(5, scope: "other", from: start, connection: "x\(b)"))
                    }
                }
            }
            try await writers.waitForAll()
        }
    }

    /// The backends one after the other: both at once, beside the rest of the suite, loaded a
    /// two-core machine's test process enough to delay each server step by seconds.
    @Test(.serialized, arguments: Backend.allCases)
    func twentyLiveClientsGetEveryCommitOnceInOrderDespiteASlowOne(backend: Backend) async throws {
        try await withRecorder(backend) { client, store, _ in
            let port = try #require(client.port)
            let batches = 20
            let perBatch = 200
            let ready = TestCounter()
            let fastDone = TestCounter()
            /// How long the writers took, in milliseconds; 0 until they are done.
            let ingestMillis = TestCounter()
            let results = try await withThrowingTaskGroup(of: (slow: Bool, ids: [String], done: ContinuousClock.Instant).self) { group in
                for k in 0..<20 {
                    let slow = k == 0
                    group.addTask {
                        let outcome = Mutex<([String], ContinuousClock.Instant)>(([], .now))
                        try await withStream(port: port, query: "scope=load&mode=live") { stream in
                            do {
                                _ = try await stream.wait(forType: "caughtUp")
                            } catch {
                                // The test fails on the wait for all 20 below, which drops this error; seen
                                // in most full runs on a slow machine (PostgreSQL), so say what the client got.
                                print("twentyLiveClients, client \(k) (\(backend)): no caughtUp: \(error)")
                                throw error
                            }
                            if slow { stream.stall(true) }
                            ready.add()
                            if slow {
                                // Reads nothing until every fast client has everything.
                                try await waitFor("the fast clients to get everything", timeout: .seconds(90)) { fastDone.value == 19 }
                                stream.stall(false)
                            }
                            do {
                                // Delivery is bounded from the last commit, not from the start of
                                // the ingest, which shares the loaded test process: in a CI run a
                                // fast client timed out with 3,118 events and held all 4,000, in
                                // commit order, a moment later.
                                try await waitFor("the ingest to finish", timeout: .seconds(90)) { ingestMillis.value > 0 }
                                try await stream.wait(forEvents: batches * perBatch, timeout: .seconds(60))
                            } catch {
                                // Late or lost? Say whether what arrived is the commit order's prefix.
                                let got = stream.eventIds
                                let expected = (try? await Self.committedIds(store, scope: "load")) ?? []
                                let firstDifference = zip(got, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                                let received = Set(got)
                                let missing = expected.indices.filter { !received.contains(expected[$0]) }
                                print("twentyLiveClients, client \(k) (\(backend), slow: \(slow)): \(error); \(got.count) of \(expected.count) events, first difference at \(firstDifference.map(String.init) ?? "none"), missing positions \(missing.first ?? -1)...\(missing.last ?? -1) (\(missing.count)), ingest took \(ingestMillis.value) ms (0: unfinished), \(stream.eventIds.count) held after the check")
                                throw error
                            }
                            let doneAt = ContinuousClock.now
                            if !slow { fastDone.add() }
                            try await Task.sleep(for: .milliseconds(200))
                            let received = stream.eventIds
                            outcome.withLock { $0 = (received, doneAt) }
                        }
                        let (received, doneAt) = outcome.withLock { $0 }
                        return (slow, received, doneAt)
                    }
                }
                // Bounded: a client that failed before it was ready must fail the test, not hang it.
                try await waitFor("20 LIVE clients caught up", timeout: .seconds(60)) { ready.value == 20 }
                let ingestStart = ContinuousClock.now
                try await Self.ingestFromTwoWriters(client, batches: batches, perBatch: perBatch)
                ingestMillis.set(max(1, Int(ingestStart.duration(to: .now) / .milliseconds(1))))
                // For reading a failure of this test in a full run: how long the writers took.
                print("twentyLiveClients (\(backend)): ingest of \(batches) batches took \(ingestMillis.value) ms")
                var all = [(slow: Bool, ids: [String], done: ContinuousClock.Instant)]()
                for try await r in group { all.append(r) }
                return all
            }
            let expected = try await Self.committedIds(store, scope: "load")
            #expect(expected.count == batches * perBatch)
            for r in results { #expect(r.ids == expected, "client (slow: \(r.slow)) got \(r.ids.count) events, not the commit order") }
            let slowDone = results.first { $0.slow }!.done
            #expect(results.filter { !$0.slow }.allSatisfy { $0.done < slowDone })
        }
    }

    /// A LIVE client whose position the in-memory tail has left behind reads the store from
    /// there, then returns to the tail: every commit once, in commit order. Paused, so that it
    /// surely falls behind (a client that merely stops reading is first absorbed by loopback's
    /// socket buffers, megabytes); the twenty-client test covers a slow reader.
    @Test(arguments: Backend.allCases)
    func aLiveClientBehindTheTailReadsTheStoreThenTheTail(backend: Backend) async throws {
        try await withRecorder(backend, feedCapacity: 100) { client, store, metrics in
            let port = try #require(client.port)
            try await withStream(port: port, query: "scope=load&mode=live") { stream in
                try await stream.wait(forType: "caughtUp")
                try await stream.send(#"{"type":"pause"}"#)
                try await stream.wait(forType: "heartbeat")
                // Six batches of 100 pass a tail of 100.
                try await Self.ingestFromTwoWriters(client, batches: 6, perBatch: 100)
                try await stream.send(#"{"type":"resume"}"#)
                try await stream.wait(forEvents: 600)
                // Back on the tail: a commit after the catch-up arrives too, once.
                let later = Self.frames(10, scope: "load", from: Timestamp(microseconds: Self.t0.microseconds + 10_000_000))
                try await client.ingest(later)
                try await stream.wait(forEvents: 610)
                try await Task.sleep(for: .milliseconds(200))
                #expect(stream.eventIds == (try await Self.committedIds(store, scope: "load")))
            }
            let exposition = String(decoding: metrics.exposition(), as: UTF8.self)
            #expect(exposition.contains("nova_stream_catchups_total "), "\(exposition)")
            #expect(!exposition.contains("nova_stream_catchups_total 0\n"), "the paused client never fell behind the tail")
        }
    }

    @Test(arguments: Backend.allCases)
    func badInputGetsAnErrorAndACloseWhileOthersStream(backend: Backend) async throws {
        try await withRecorder(backend) { client, _, _ in
            let port = try #require(client.port)
            let watching = TestCounter()
            let badDone = TestCounter()
            try await withThrowingTaskGroup(of: Void.self) { group in
                // One client that must not be disturbed by the others' bad input. (Streams run
                // side by side: the test client cannot open one stream inside another's handler.)
                group.addTask {
                    try await withStream(port: port, query: "scope=s&mode=live") { watcher in
                        try await watcher.wait(forType: "caughtUp")
                        watching.add()
                        while badDone.value == 0 { try await Task.sleep(for: .milliseconds(10)) }
                        let events = Self.frames(3)
                        try await client.ingest(events)
                        try await watcher.wait(forEvents: 3)
                        #expect(watcher.eventIds == Self.ids(events))
                    }
                }
                while watching.value == 0 { try await Task.sleep(for: .milliseconds(10)) }
                let badQueries: [(String, String)] = [
                    ("scope=s&bogus=1", #""bogus": unknown parameter"#),
                    ("mode=live", "scope: required"),
                    ("scope=s&mode=sideways", "mode: must be live or rewind"),
                    ("scope=s&mode=rewind", "from: required"),
                    ("scope=s&mode=rewind&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from: must not be after to"),
                    ("scope=s&mode=rewind&from=2026-01-01T00:00:00Z&speed=-1", "speed: must be a number from 0"),
                    ("scope=s&mode=rewind&from=yesterday", "from: "),
                    ("scope=s&mode=live&from=2026-01-01T00:00:00Z", "from: only for mode=rewind"),
                    ("scope=s&lane=video", "lane: "),
                ]
                for (query, message) in badQueries {
                    try await Self.expectRefused(port: port, query: query, naming: message)
                }
                let badMessages: [(String, String)] = [
                    ("{", "message: invalid JSON"),
                    ("[1]", "message: must be a JSON object"),
                    (#"{"type":"rewind"}"#, "type: must be pause, resume, seek or speed"),
                    (#"{"type":"speed","value":-2}"#, "value: must be a number from 0"),
                    (#"{"type":"seek","to":"soon"}"#, "to: "),
                    (#"{"type":"pause","now":true}"#, #""now": unknown member of a pause message"#),
                ]
                for (text, message) in badMessages {
                    let close = try await withStream(port: port, query: "scope=s&mode=live") { stream in
                        try await stream.wait(forType: "caughtUp")
                        try await stream.send(text)
                        let got = try await stream.wait(forType: "error")
                        let error = got.last?.json["error"]?.stringValue ?? ""
                        #expect(error.contains(message), "\(text): \(error)")
                        try await stream.waitUntilClosedByServer()
                    }
                    #expect(close?.closeCode == .policyViolation, "\(text)")
                }
                // A binary message: 1003 (unacceptable data), the rule named.
                let binary = try await withStream(port: port, query: "scope=s&mode=live") { stream in
                    try await stream.wait(forType: "caughtUp")
                    try await stream.send(binary: [1, 2, 3])
                    let error = try await stream.wait(forType: "error").last?.json["error"]?.stringValue ?? ""
                    #expect(error.contains("message: must be a JSON text message, not binary"), "\(error)")
                    try await stream.waitUntilClosedByServer()
                }
                #expect(binary?.closeCode == .unacceptableData)
                badDone.add()
                try await group.waitForAll()
            }
        }
    }

    /// Opens a stream with bad parameters and expects an `error` naming the problem, then 1008.
    ///
    /// The server answers in its first frame, and swift-websocket's client now and then misses
    /// frames that arrive together with the upgrade response (seen under load; a Python client
    /// got 300 of 300 answers from the same server). A connection that saw nothing at all is
    /// therefore tried again, up to three times; a wrong answer fails at once.
    static func expectRefused(port: Int, query: String, token: String? = nil, naming message: String) async throws {
        for attempt in 1...3 {
            let close: WebSocketCloseFrame?
            do {
                close = try await withStream(port: port, query: query, token: token) { stream in
                    let got = try await stream.wait(forType: "error", timeout: .seconds(5))
                    let error = got.last?.json["error"]?.stringValue ?? ""
                    #expect(error.contains(message), "\(query): \(error)")
                    try await stream.waitUntilClosedByServer()
                }
            } catch let error as StreamTestError where error.messagesSeen == 0 && attempt < 3 {
                continue
            }
            #expect(close?.closeCode == .policyViolation, "\(query)")
            return
        }
    }

    /// A refused token is told on the socket (an `error`, then 1008), not as a bare 400: that is
    /// all hummingbird-websocket can answer to a refused upgrade, and browsers show no status.
    @Test func streamsNeedTheReadRole() async throws {
        try await withRecorder(.sqlite, configure: AuthTests().configure) { client, _, _ in
            let port = try #require(client.port)
            try await Self.expectRefused(port: port, query: "scope=s", naming: "Authorization: a bearer token is required")
            try await Self.expectRefused(port: port, query: "scope=s", token: "nope", naming: "Authorization: unknown token")
            try await Self.expectRefused(port: port, query: "scope=s", token: AuthTests.ingestToken, naming: "Authorization: this token lacks the read role")
            try await withStream(port: port, query: "scope=s", token: AuthTests.readToken) { stream in
                try await stream.wait(forType: "caughtUp")
            }
        }
    }
}
