import NovaCore
import NovaTestSupport
import Testing

@Suite struct AppendTests {
    func raw(_ scope: String, _ source: Int64, _ canonical: Int64, seq: Int64 = 1, bytes: [UInt8] = [1]) -> Event {
        Event(scopeId: scope, sourceTruthTime: Timestamp(microseconds: source), canonicalTruthTime: Timestamp(microseconds: canonical),
              fields: .raw(connectionId: "c", sequence: seq, bytes: bytes))
    }

    /// Pages and commit-order reads bounded by bytes end early with a cursor (or, in commit
    /// order, without a gap), and following them reads exactly what an unbounded read does.
    @Test(arguments: Backend.allCases)
    func readsBoundedByBytesEndEarlyAndMissNothing(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        // 30 events of about 10 KB in two lanes, interleaved in time and in commit order.
        let events = (0..<30).map { i -> Event in
            let t = Timestamp(microseconds: 1_000_000 + Int64(i) * 1_000)
            let big = [UInt8](repeating: UInt8(i), count: 10_000)
            return i % 3 == 0
                ? Event(scopeId: "s", sourceTruthTime: t, canonicalTruthTime: t, fields: .metadata(metadataType: "m", payload: CanonicalPayload([JSONMember("x", .string(String(repeating: "y", count: 10_000 + i)))])))
                : Event(scopeId: "s", sourceTruthTime: t, canonicalTruthTime: t, fields: .raw(connectionId: "c", sequence: Int64(i), bytes: big))
        }
        _ = try await store.append(events)
        for lanes in [[Lane.raw], Lane.allCases] {
            let query = EventQuery(scopeId: "s", range: Timestamp.min..<Timestamp.endOfTime, lanes: lanes, limit: 100)
            let whole = try await store.page(query)
            var bounded = query
            bounded.maxBytes = 35_000
            let first = try await store.page(bounded)
            #expect(first.events.count == 4 && first.next != nil, "\(lanes): \(first.events.count) events")
            let paged = try await store.allPages(bounded)
            #expect(paged.events.map(\.eventId) == whole.events.map(\.eventId), "\(lanes)")
            #expect(paged.pages >= whole.events.count / 4)
        }
        var position: Int64 = 0
        var seqs = [Int64]()
        while true {
            let rows = try await store.committed(after: position, limit: 1_000, maxBytes: 35_000)
            guard let last = rows.last else { break }
            #expect(rows.count <= 4)
            seqs += rows.map(\.seq)
            position = last.seq
        }
        #expect(seqs == Array(1...30), "commit order, no gap, no repeat")
    }

    @Test(arguments: Backend.allCases)
    func dedupeIsGlobalAndKeepsTheFirstCopy(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        let first = raw("s", 1_000, 5_000)
        let sameContentLater = raw("s", 1_000, 9_000_000)
        let other = raw("s", 1_000, 5_000, seq: 2)
        let r1 = try await store.append([first, sameContentLater, other])
        #expect(r1.ingestSeqs == [1, nil, 2])
        let r2 = try await store.append([sameContentLater, raw("s", 2_000, 1, seq: 3), first])
        #expect(r2.ingestSeqs == [nil, 3, nil])
        let all = try await store.page(EventQuery(scopeId: "s", range: Timestamp.min..<Timestamp.endOfTime))
        #expect(all.events.count == 3)
        #expect(all.events.first { $0.eventId == first.eventId }?.canonicalTruthTime == first.canonicalTruthTime)
        // Found again under the other timebase, at the first copy's canonical time only.
        let late = try await store.page(EventQuery(scopeId: "s", range: Timestamp(microseconds: 8_000_000)..<Timestamp.endOfTime))
        #expect(late.events.isEmpty)
    }

    @Test(arguments: Backend.allCases)
    func everyLaneRoundTripsEveryField(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        let vectors = try Fixtures.vector("event-ids.json").arrayValue
        let events = try vectors.map { try EventDecoder().decode($0["event"]!, receivedAt: .min).get() }
        let result = try await store.append(events)
        let unique = Set(events.map(\.eventId))
        #expect(result.accepted == unique.count)
        var got = [Event]()
        for scope in Set(events.map(\.scopeId)) {
            got += try await store.page(EventQuery(scopeId: scope, range: Timestamp.min..<Timestamp.endOfTime)).events
        }
        var firstCopies = [EventID: Event]()
        for e in events where firstCopies[e.eventId] == nil { firstCopies[e.eventId] = e }
        #expect(Set(got) == Set(firstCopies.values))
        for e in got { #expect(e.computedEventId == e.eventId) }
    }

    @Test(arguments: Backend.allCases)
    func rangesAreHalfOpenOnTheChosenTimebase(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        _ = try await store.append([raw("s", 10, 100), raw("s", 20, 200, seq: 2), raw("s", 30, 300, seq: 3)])
        func ids(_ from: Int64, _ to: Int64, _ tb: Timebase) async throws -> [Int64] {
            try await store.page(EventQuery(scopeId: "s", range: Timestamp(microseconds: from)..<Timestamp(microseconds: to), timebase: tb))
                .events.map(\.sourceTruthTime.microseconds)
        }
        #expect(try await ids(100, 300, .canonical) == [10, 20])
        #expect(try await ids(10, 30, .source) == [10, 20])
        #expect(try await ids(20, 21, .source) == [20])
        #expect(try await ids(20, 20, .source) == [])
        #expect(try await ids(31, 1000, .source) == [])
    }

    @Test(arguments: Backend.allCases)
    func statsCountPerScopeAndLane(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        let ui = Event(scopeId: "a", sourceTruthTime: Timestamp(microseconds: 7), canonicalTruthTime: Timestamp(microseconds: 8),
                       fields: .ui(viewId: "v", payload: .empty))
        let ui2 = Event(scopeId: "a", sourceTruthTime: Timestamp(microseconds: 9), canonicalTruthTime: Timestamp(microseconds: 3),
                        fields: .ui(viewId: "w", payload: .empty))
        _ = try await store.append([raw("b", 10, 100), ui, raw("b", 20, 50, seq: 2), raw("b", 20, 50, seq: 2), ui2])
        let stats = try await store.stats()
        #expect(stats.lanes.map { "\($0.scopeId)/\($0.lane)/\($0.count)" } == ["a/ui/2", "b/raw/2"])
        #expect(stats.lanes[0].firstCanonicalTruthTime.microseconds == 3 && stats.lanes[0].lastSourceTruthTime.microseconds == 9)
        let b = stats.lanes[1]
        #expect(b.firstCanonicalTruthTime.microseconds == 50 && b.lastCanonicalTruthTime.microseconds == 100)
        #expect(b.firstSourceTruthTime.microseconds == 10 && b.lastSourceTruthTime.microseconds == 20)
        #expect(stats.totalEvents == 4 && stats.storeBytes > 0)
    }
}

@Suite struct ConcurrentAppendTests {
    /// Concurrent writers with overlapping batches: every event stored once, `ingestSeq` 1…n
    /// without gaps or repeats.
    @Test(arguments: Backend.allCases)
    func concurrentOverlappingAppends(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        var gen = RandomEvents(seed: 77)
        let events = gen.events(2000)
        let results = try await Self.appendConcurrently(store, writers: 6) { writer in
            stride(from: writer * 100, to: events.count, by: 600).map { start in Array(events[start..<min(events.count, start + 700)]) }
        }
        let unique = Set(events.map(\.eventId)).count
        #expect(results.sorted() == Array(1...Int64(unique)))
        let stored = try await store.allPages(EventQuery(scopeId: "site-a", range: Timestamp.min..<Timestamp.endOfTime, limit: 500)).events
        #expect(Set(stored.map(\.eventId)).count == stored.count)
        #expect(stored.count == Set(events.filter { $0.scopeId == "site-a" }.map(\.eventId)).count)
    }

    /// Writers appending the same events, each in its own order and batching: every event is
    /// stored once with `ingestSeq` 1…n, and no writer fails (on PostgreSQL the dedupe entries of
    /// concurrent batches are written before the counter is locked, in key order, which is what
    /// keeps two such batches from deadlocking).
    @Test(arguments: Backend.allCases)
    func sameEventsInDifferentOrdersFromConcurrentWriters(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        var gen = RandomEvents(seed: 78)
        let events = gen.events(1500)
        let results = try await Self.appendConcurrently(store, writers: 6) { writer in
            var rng = SeededGenerator(seed: UInt64(writer) + 1)
            var mine = events
            if writer % 2 == 1 { mine.reverse() }
            if writer >= 2 { mine.shuffle(using: &rng) }
            let size = 250 + writer * 50
            return stride(from: 0, to: mine.count, by: size).map { start in Array(mine[start..<min(mine.count, start + size)]) }
        }
        #expect(results.sorted() == Array(1...Int64(Set(events.map(\.eventId)).count)))
    }

    /// Runs `writers` concurrent writers, each appending its batches in turn; every `ingestSeq`
    /// they were given.
    static func appendConcurrently(_ store: any EventStore, writers: Int, batches: @escaping @Sendable (Int) -> [[Event]]) async throws -> [Int64] {
        try await withThrowingTaskGroup(of: [Int64].self) { group in
            for writer in 0..<writers {
                group.addTask {
                    var seqs = [Int64]()
                    for batch in batches(writer) { seqs += try await store.append(batch).ingestSeqs.compactMap { $0 } }
                    return seqs
                }
            }
            var all = [Int64]()
            for try await seqs in group { all += seqs }
            return all
        }
    }
}
