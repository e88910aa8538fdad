import NovaCore
import NovaTestSupport
import Testing

/// The store side of sync.md on every backend: applying batches with watermarks (replays, gaps,
/// overlaps, repairs), the outbox's state, and bucket digests.
@Suite struct SyncStoreTests {
    func batch(_ events: [CommittedEvent], first: Int64, last: Int64, site: String = "site-a", store: String = "e0000000-0000-4000-8000-000000000001", kind: SyncBatch.Kind = .outbox)
        -> SyncBatch
    {
        SyncBatch(
            kind: kind, siteId: site, storeId: store, firstSeq: first, lastSeq: last, pendingFrom: Timestamp(microseconds: 42_000_000),
            outboxSize: 7, events: events)
    }

    func numbered(_ events: [Event], from: Int64 = 1) -> [CommittedEvent] {
        events.enumerated().map { CommittedEvent(seq: from + Int64($0.offset), event: $0.element) }
    }

    func uniqueEvents(_ count: Int, seed: UInt64) -> [Event] {
        var random = RandomEvents(seed: seed)
        var seen = Set<EventID>()
        var out = [Event]()
        while out.count < count {
            let e = random.event()
            if seen.insert(e.eventId).inserted { out.append(e) }
        }
        return out
    }

    @Test(arguments: Backend.allCases)
    func batchesAdvanceTheWatermarkOnceAndInOrder(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        let events = numbered(uniqueEvents(30, seed: 1))
        #expect(try await store.syncWatermark(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000001").ackedSeq == 0)

        let first = try await store.applySync(batch(Array(events[0..<10]), first: 1, last: 10)).outcome
        guard case .applied(let w1, accepted: 10, duplicates: 0) = first else { Issue.record("\(first)"); return }
        #expect(w1 == SyncWatermark(ackedSeq: 10, lastEventId: events[9].event.eventId))

        // The same batch again: an idempotent replay that changes nothing.
        #expect(try await store.applySync(batch(Array(events[0..<10]), first: 1, last: 10)).outcome == .alreadyApplied(w1))
        // A batch that skips ahead: a gap, answered with the watermark to resume from.
        #expect(try await store.applySync(batch(Array(events[20..<30]), first: 21, last: 30)).outcome == .gap(w1))
        // Overlapping 6...20: only 11...20 is new.
        let overlap = try await store.applySync(batch(Array(events[5..<20]), first: 6, last: 20)).outcome
        guard case .applied(let w2, accepted: 10, duplicates: 0) = overlap else { Issue.record("\(overlap)"); return }
        #expect(w2.ackedSeq == 20)
        #expect(try await store.syncWatermark(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000001") == w2)

        // Another store of the same site has its own sequence; its copies are deduped.
        let replacedResult = try await store.applySync(batch(Array(events[0..<25]), first: 1, last: 25, store: "e0000000-0000-4000-8000-000000000002"))
        let replaced = replacedResult.outcome
        guard case .applied(_, accepted: 5, duplicates: 20) = replaced else { Issue.record("\(replaced)"); return }
        // The stored part comes back with the hub's own positions, for its LIVE streams.
        #expect(replacedResult.appended.count == 25)
        #expect(replacedResult.ingestSeqs.compactMap { $0 } == [21, 22, 23, 24, 25])

        let stored = try await store.stats().totalEvents
        #expect(stored == 25)
        let sites = try await store.syncSites()
        #expect(sites.map(\.storeId).sorted() == ["e0000000-0000-4000-8000-000000000001", "e0000000-0000-4000-8000-000000000002"])
        let one = try #require(sites.first { $0.storeId == "e0000000-0000-4000-8000-000000000001" })
        #expect(one.ackedSeq == 20)
        #expect(one.batchesApplied == 2)
        #expect(one.eventsApplied == 20)
        #expect(one.pendingEvents == 7)
        #expect(one.completeThrough == Timestamp(microseconds: 42_000_000))
    }

    /// Per-scope completeness: the last report replaces the one before; scopes it does not name
    /// take its value for other scopes; a report without it falls back to the site-wide value.
    @Test(arguments: Backend.allCases)
    func completenessIsKeptPerScope(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        let events = numbered(uniqueEvents(10, seed: 3))
        let t = { (s: Int64) in Timestamp(microseconds: 1_780_000_000_000_000 + s * 1_000_000) }
        var first = batch(Array(events[0..<5]), first: 1, last: 5)
        first.pendingFrom = t(10)
        first.scopePendingFrom = ["a": t(10), "b": t(20)]
        first.otherScopesPendingFrom = t(30)
        _ = try await store.applySync(first)
        var site = try #require(try await store.syncSites().first)
        #expect(site.completeThrough(scope: "a") == t(10) && site.completeThrough(scope: "b") == t(20) && site.completeThrough(scope: "c") == t(30))

        // The next report: only b is pending now.
        let heartbeat = SyncBatch(
            kind: .heartbeat, siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000001", firstSeq: 0, lastSeq: 5,
            pending: PendingFrom(site: t(25), scopes: ["b": t(25)], otherScopes: t(40)), outboxSize: 0, events: [])
        _ = try await store.applySync(heartbeat)
        site = try #require(try await store.syncSites().first)
        #expect(site.completeThrough == t(25))
        #expect(site.completeThrough(scope: "a") == t(40) && site.completeThrough(scope: "b") == t(25))

        // An edge that reports only the site-wide value: it stands for every scope.
        var plain = batch(Array(events[5..<10]), first: 6, last: 10)
        plain.pendingFrom = t(50)
        _ = try await store.applySync(plain)
        site = try #require(try await store.syncSites().first)
        #expect(site.scopesCompleteThrough.isEmpty && site.otherScopesCompleteThrough == nil)
        #expect(site.completeThrough(scope: "a") == t(50) && site.completeThrough(scope: "b") == t(50))
    }

    /// A batch may start before its predecessor is applied and wait for its turn inside
    /// `applySync` (the hub's sequencer, `nova migrate`'s window): it still applies in order, and
    /// one whose turn comes at a watermark it did not expect is answered from that watermark,
    /// its early work rolled back.
    /// A forgotten site loses its watermarks (every store), not its events; a site still shipping
    /// comes back through the usual gap and resend.
    @Test(arguments: Backend.allCases)
    func aForgottenSiteKeepsItsEventsAndMayComeBack(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        let events = numbered(uniqueEvents(20, seed: 9))
        _ = try await store.applySync(batch(Array(events[0..<5]), first: 1, last: 5))
        _ = try await store.applySync(batch(Array(events[5..<10]), first: 1, last: 5, store: "e0000000-0000-4000-8000-000000000002"))
        _ = try await store.applySync(batch(Array(events[10..<15]), first: 1, last: 5, site: "site-b"))
        #expect(try await store.forgetSyncSite("site-a") == 2)
        #expect(try await store.forgetSyncSite("site-a") == 0)
        #expect(try await store.syncSites().map(\.siteId) == ["site-b"])
        #expect(try await store.syncWatermark(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000001").ackedSeq == 0)
        #expect(try await store.stats().totalEvents == 15)
        // Still shipping, it is answered with a gap at 0, and re-sends from its start what its
        // retention left (here, 6...10).
        #expect(try await store.applySync(batch(Array(events[15..<20]), first: 6, last: 10)).outcome == .gap(SyncWatermark(ackedSeq: 0, lastEventId: nil)))
        let back = try await store.applySync(batch(Array(events[15..<20]), first: 1, last: 10)).outcome
        guard case .applied(let w, accepted: 5, duplicates: 0) = back else { Issue.record("\(back)"); return }
        #expect(w.ackedSeq == 10)
        #expect(Set(try await store.syncSites().map(\.siteId)) == ["site-a", "site-b"])
    }

    @Test(arguments: Backend.allCases)
    func batchesWaitingForTheirTurnApplyInOrder(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        let events = numbered(uniqueEvents(40, seed: 3))
        func gate() -> (turn: @Sendable () async -> Void, open: @Sendable () -> Void) {
            let (opened, open) = AsyncStream<Void>.makeStream()
            return ({ for await _ in opened {} }, { open.finish() })
        }

        // 11...20 starts first and waits; 1...10 applies; then 11...20 applies after it.
        let (turn, open) = gate()
        let second = Task { try await store.applySync(batch(Array(events[10..<20]), first: 11, last: 20), turn: turn).outcome }
        try await Task.sleep(for: .milliseconds(200))
        guard case .applied(_, accepted: 10, duplicates: 0) = try await store.applySync(batch(Array(events[0..<10]), first: 1, last: 10)).outcome
        else { Issue.record("first batch not applied"); return }
        #expect(try await store.syncWatermark(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000001").ackedSeq == 10)
        open()
        #expect(try await second.value == .applied(SyncWatermark(ackedSeq: 20, lastEventId: events[19].event.eventId), accepted: 10, duplicates: 0))

        // 31...40 whose turn comes before 21...30 was applied: a gap, and nothing of it stays.
        let early = try await store.applySync(batch(Array(events[30..<40]), first: 31, last: 40)).outcome
        #expect(early == .gap(SyncWatermark(ackedSeq: 20, lastEventId: events[19].event.eventId)))
        #expect(try await store.stats().totalEvents == 20)

        // 21...30 expects the watermark at 20, but another delivery moves it to 25 meanwhile
        // (other events as 21...25, so that neither waits for the other's dedupe entries): it
        // then applies 26...30 only.
        let (turn3, open3) = gate()
        let third = Task { try await store.applySync(batch(Array(events[20..<30]), first: 21, last: 30), turn: turn3).outcome }
        try await Task.sleep(for: .milliseconds(200))
        let others = numbered(uniqueEvents(5, seed: 4), from: 21)
        guard case .applied(_, accepted: 5, duplicates: 0) = try await store.applySync(batch(Array(events[10..<20]) + others, first: 11, last: 25)).outcome
        else { Issue.record("11...25 not applied"); return }
        open3()
        #expect(try await third.value == .applied(SyncWatermark(ackedSeq: 30, lastEventId: events[29].event.eventId), accepted: 5, duplicates: 0))
        guard case .applied(_, accepted: 10, duplicates: 0) = try await store.applySync(batch(Array(events[30..<40]), first: 31, last: 40)).outcome
        else { Issue.record("31...40 not applied after its predecessor"); return }
        #expect(try await store.stats().totalEvents == 40)
        #expect(try await store.syncWatermark(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000001").ackedSeq == 40)
    }

    @Test(arguments: Backend.allCases)
    func repairBatchesInsertMissingEventsAndLeaveWatermarks(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        let events = numbered(uniqueEvents(6, seed: 2))
        _ = try await store.applySync(batch(Array(events[0..<3]), first: 1, last: 3)).outcome
        let repair = batch(events.map { CommittedEvent(seq: 0, event: $0.event) }, first: 0, last: 0, kind: .repair)
        let outcome = try await store.applySync(repair).outcome
        guard case .applied(let w, accepted: 3, duplicates: 3) = outcome else { Issue.record("\(outcome)"); return }
        #expect(w.ackedSeq == 3)
        #expect(try await store.syncWatermark(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000001").ackedSeq == 3)
        #expect(try await store.stats().totalEvents == 6)
    }

    @Test(arguments: Backend.allCases)
    func theOutboxTracksAcknowledgementsAndIdentity(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        var events = uniqueEvents(5, seed: 3)
        for k in events.indices { events[k].canonicalTruthTime = Timestamp(microseconds: Int64(1_000 - k)) }
        _ = try await store.append(events)
        let start = try await store.outboxState()
        #expect(start.lastSeq == 5)
        #expect(start.ackedSeq == 0)
        #expect(start.pendingEvents == 5)
        try await store.recordAcknowledged(3)
        try await store.recordAcknowledged(2)  // never backwards
        #expect(try await store.outboxState().ackedSeq == 3)
        #expect(try await store.oldestCanonicalTime(after: 3) == Timestamp(microseconds: 996))
        #expect(try await store.oldestCanonicalTime(after: 5) == nil)
        var tail = [Lane: Int64]()
        for e in events[3...] { tail[e.lane, default: 0] += 1 }
        #expect(try await store.committedCounts(after: 3).filter { $0.value > 0 } == tail)
        #expect(try await store.committedCounts(after: 5).values.allSatisfy { $0 == 0 })

        let fresh = try await store.renewStoreId()
        let renewed = try await store.outboxState()
        #expect(fresh != start.storeId)
        #expect(renewed.storeId == fresh)
        #expect(renewed.ackedSeq == 0)
        #expect(renewed.lastSeq == 5)
    }

    @Test(arguments: Backend.allCases)
    func digestsAreCountsAndXorsPerLaneAndBucket(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        var random = RandomEvents(seed: 4)
        let events = random.events(400)
        _ = try await store.append(events)
        var firstCopies = [EventID: Event]()
        for e in events where firstCopies[e.eventId] == nil { firstCopies[e.eventId] = e }
        for timebase in Timebase.allCases {
            let range = Timestamp(microseconds: random.base.microseconds + 1_000)..<Timestamp(microseconds: random.base.microseconds + 8_000)
            let request = DigestRequest(scopeId: "site-a", range: range, timebase: timebase, bucketMicros: 1_500)
            let want = [BucketDigest].folding(firstCopies.values.filter { e in
                let t = timebase == .canonical ? e.canonicalTruthTime : e.sourceTruthTime
                return e.scopeId == "site-a" && range.contains(t)
            }.map { e in
                let t = timebase == .canonical ? e.canonicalTruthTime : e.sourceTruthTime
                return (e.lane, request.bucketStart(t.microseconds), e.eventId)
            })
            let got = try await store.digests(request)
            #expect(got == want, "timebase \(timebase)")
            #expect(!got.isEmpty)
            #expect(DigestDifference.compare(got, want).isEmpty)
        }
        // Pre-epoch buckets start at multiples of the width too (floor, not truncation).
        let early = Event(
            scopeId: "old", sourceTruthTime: Timestamp(microseconds: 1), canonicalTruthTime: Timestamp(microseconds: 2_500),
            fields: .metadata(metadataType: "m", payload: CanonicalPayload([])))
        _ = try await store.append([early])
        let d = try await store.digests(DigestRequest(scopeId: "old", range: Timestamp.min..<Timestamp.endOfTime, bucketMicros: 1_000))
        #expect(d == [BucketDigest(lane: .metadata, bucketStart: Timestamp(microseconds: 2_000), count: 1, xor: early.eventId)])
    }
}

@Suite struct SyncBatchCodecTests {
    static func events(seed: UInt64) -> [CommittedEvent] {
        var random = RandomEvents(seed: seed)
        var events = [CommittedEvent]()
        var seen = Set<EventID>()
        var seq: Int64 = 10
        while events.count < 20 {
            let e = random.event()
            guard seen.insert(e.eventId).inserted else { continue }
            events.append(CommittedEvent(seq: seq, event: e))
            seq += 2  // positions may skip (events the edge's retention removed under an earlier identity)
        }
        return events
    }

    static func fault(_ body: [UInt8], version: Int = SyncBatchCodec.version) -> String {
        do {
            _ = try body.withUnsafeBufferPointer { try SyncBatchCodec.decode($0, version: version, decoder: EventDecoder()) }
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    @Test(arguments: [1, 2])
    func batchesRoundTripInEitherVersion(version: Int) throws {
        let events = Self.events(seed: 9)
        #expect(Set(events.map(\.event.lane)) == Set(Lane.allCases))
        let batch = SyncBatch(
            siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000003", firstSeq: 9, lastSeq: events.last!.seq, pendingFrom: Timestamp(microseconds: 5), outboxSize: 3, events: events)
        let bytes = SyncBatchCodec.encode(batch, version: version)
        let back = try bytes.withUnsafeBufferPointer { try SyncBatchCodec.decode($0, version: version, decoder: EventDecoder()) }
        #expect(back.events.map(\.seq) == events.map(\.seq))
        #expect(back.events.map(\.event) == events.map(\.event))
        #expect(back.siteId == "site-a" && back.storeId == "e0000000-0000-4000-8000-000000000003" && back.firstSeq == 9 && back.lastSeq == batch.lastSeq)
        #expect(back.pendingFrom == Timestamp(microseconds: 5) && back.outboxSize == 3)
        #expect(back.scopePendingFrom == nil && back.otherScopesPendingFrom == nil, "optional: a batch without them decodes as before")
        #expect(Self.fault(bytes, version: 3 - version).contains("header.version: \(version), but the Content-Type is that of version \(3 - version)"))

        // Per-scope completeness travels in the header, and is checked like the rest of it.
        let pending = PendingFrom(site: Timestamp(microseconds: 5), scopes: ["a": Timestamp(microseconds: 5), "b b": Timestamp(microseconds: 7)], otherScopes: Timestamp(microseconds: 9))
        let scoped = SyncBatch(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000003", firstSeq: 9, lastSeq: events.last!.seq, pending: pending, outboxSize: 3, events: events)
        let scopedBytes = SyncBatchCodec.encode(scoped, version: version)
        let decoded = try scopedBytes.withUnsafeBufferPointer { try SyncBatchCodec.decode($0, version: version, decoder: EventDecoder()) }
        #expect(decoded.scopePendingFrom == pending.scopes && decoded.otherScopesPendingFrom == pending.otherScopes && decoded.pendingFrom == pending.site)
        #expect(decoded.events.map(\.event) == events.map(\.event))
        func replacingInHeader(_ old: String, _ new: String) -> [UInt8] {
            let end = scopedBytes.firstIndex(of: UInt8(ascii: "\n"))!
            let header = String(decoding: scopedBytes[..<end], as: UTF8.self).replacingOccurrences(of: old, with: new)
            return Array(header.utf8) + scopedBytes[end...]
        }
        #expect(Self.fault(replacingInHeader(#""b b":"1970"#, #""b b":"yesterday"#), version: version).contains("header.scopePendingFrom"))
        #expect(Self.fault(replacingInHeader(#","otherScopesPendingFrom":"1970-01-01T00:00:00.000009Z""#, ""), version: version)
            .contains("header.otherScopesPendingFrom"))
        #expect(Self.fault(replacingInHeader(#""version":\#(version)"#, #""version":7"#), version: version).contains("header.version: 7 is not supported"))
        #expect(Self.fault(replacingInHeader(#""firstSeq":9"#, #""firstSeq":-4"#), version: version).contains("header.firstSeq/lastSeq"))
        #expect(Self.fault(replacingInHeader("e0000000-0000-4000-8000-000000000003", "edge-1"), version: version)
            .contains(#"header.storeId: must be a UUID such as 0b5c1a8e-3f4d-4a5b-9c6d-7e8f9a0b1c2d (a new edge store makes one), found "edge-1""#))
        // A UUID in capitals is the same store (RFC 9562 reads either case): one watermark.
        let capitals = try replacingInHeader("e0000000-0000-4000-8000-000000000003", "E0000000-0000-4000-8000-000000000003")
            .withUnsafeBufferPointer { try SyncBatchCodec.decode($0, version: version, decoder: EventDecoder()) }
        #expect(capitals.storeId == "e0000000-0000-4000-8000-000000000003")
        #expect(Self.fault([], version: version).contains("empty"))
        #expect(Self.fault(Array("garbage\n".utf8), version: version).contains("header: invalid JSON"))
    }

    /// The shipper bounds a batch's bytes before encoding it, from each event's record size.
    @Test func recordSizesAreExactAndBoundBatches() throws {
        let events = Self.events(seed: 9)
        #expect(Set(events.map(\.event.lane)) == Set(Lane.allCases))
        let batch = SyncBatch(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000003", firstSeq: 9, lastSeq: events.last!.seq, pendingFrom: nil, outboxSize: 3, events: events)
        let bytes = SyncBatchCodec.encode(batch)
        let header = bytes.firstIndex(of: UInt8(ascii: "\n"))! + 1
        #expect(events.reduce(0) { $0 + SyncBatchCodec.recordBytes($1.event) } == bytes.count - header)
        for committed in events {
            #expect(committed.event.preimageLength == Event.preimage(scopeId: committed.event.scopeId, sourceTruthTime: committed.event.sourceTruthTime, fields: committed.event.fields).count)
        }
        let firstTwo = SyncBatchCodec.recordBytes(events[0].event) + SyncBatchCodec.recordBytes(events[1].event)
        #expect(SyncBatchCodec.fitting(events, maxBytes: firstTwo) == 2)
        #expect(SyncBatchCodec.fitting(events, maxBytes: firstTwo - 1) == 1)
        #expect(SyncBatchCodec.fitting(events, maxBytes: 1) == 1, "one event goes however large")
        #expect(SyncBatchCodec.fitting(events, maxBytes: .max) == events.count)
    }

    @Test func ndjsonFaultsAreNamed() throws {
        let events = Self.events(seed: 9)
        let batch = SyncBatch(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000003", firstSeq: 9, lastSeq: events.last!.seq, pendingFrom: nil, outboxSize: 3, events: events)
        let text = String(decoding: SyncBatchCodec.encode(batch, version: 1), as: UTF8.self)
        var lines = text.split(separator: "\n").map(String.init)
        #expect(Self.fault(Array(lines.dropLast().joined(separator: "\n").utf8), version: 1).contains("announces 20 events but 19 follow"))
        #expect(Self.fault(Array(text.utf8.prefix(text.utf8.count / 2)), version: 1).contains("announces 20 events but 10 follow"))
        // A tampered event: its content no longer hashes to its id.
        lines[3] = lines[3].replacingOccurrences(of: #""scopeId":""#, with: #""scopeId":"x"#)
        #expect(Self.fault(Array(lines.joined(separator: "\n").utf8), version: 1).contains("events[2].event.eventId"))
    }

    /// Version 2's records: a truncated, padded or tampered body, and pre-images that hash to their
    /// id but break a rule of the event model, are refused naming the event and the field.
    @Test func binaryFaultsAreNamed() throws {
        let events = Self.events(seed: 9)
        let batch = SyncBatch(siteId: "site-a", storeId: "e0000000-0000-4000-8000-000000000003", firstSeq: 9, lastSeq: events.last!.seq, pendingFrom: nil, outboxSize: 3, events: events)
        let bytes = SyncBatchCodec.encode(batch)
        let headerEnd = bytes.firstIndex(of: UInt8(ascii: "\n"))! + 1
        #expect(Self.fault(Array(bytes.dropLast())).contains("events[19]: its pre-image of"))
        #expect(Self.fault(Array(bytes[..<(headerEnd + 30)])).contains("events[0]: the body ends inside it, after 0 of the 20 events"))
        #expect(Self.fault(bytes + [0, 0, 0]).contains("body: 3 bytes follow the 20 events"))
        var tampered = bytes
        tampered[headerEnd + 60] ^= 1  // inside the first pre-image
        #expect(Self.fault(tampered).contains("events[0].event.eventId: is not the SHA-256 of the event's pre-image"))
        var reordered = bytes
        reordered[headerEnd + 7] = 200  // the first record's seq, past lastSeq
        #expect(Self.fault(reordered).contains("events[0].seq: 200 must be after 8"))

        /// One record whose id is its pre-image's hash, in a batch of one.
        func single(_ preimage: [UInt8], canonical: Int64 = 1_000) -> [UInt8] {
            let one = SyncBatch(siteId: "s", storeId: "e0000000-0000-4000-8000-000000000004", firstSeq: 1, lastSeq: 1, pendingFrom: nil, outboxSize: 0, events: [events[0]])
            let encoded = SyncBatchCodec.encode(one)
            var out = Array(encoded[..<(encoded.firstIndex(of: UInt8(ascii: "\n"))! + 1)])
            func int(_ v: UInt64, _ width: Int) { for k in (0..<width).reversed() { out.append(UInt8(truncatingIfNeeded: v >> UInt64(8 * k))) } }
            int(1, 8)
            int(UInt64(bitPattern: canonical), 8)
            out += EventID(hashing: preimage).bytes
            int(UInt64(preimage.count), 4)
            return out + preimage
        }
        func field(_ s: [UInt8]) -> [UInt8] { [0, 0, UInt8(s.count >> 8), UInt8(s.count & 255)] + s }
        func field(_ s: String) -> [UInt8] { field(Array(s.utf8)) }
        let time: [UInt8] = [0, 0x06, 0x49, 0x5f, 0x7d, 0x6a, 0x9c, 0]
        func metadata(scope: [UInt8] = Array("s".utf8), time: [UInt8] = time, payload: String = "{}") -> [UInt8] {
            field("nova.event.v1") + field("metadata") + field(scope) + time + field("m") + field(payload)
        }
        #expect(Self.fault(single(metadata())) == "accepted")
        let cases: [(String, [UInt8], String)] = [
            ("unknown lane", field("nova.event.v1") + field("video") + field("s") + time, "events[0].event.lane: "),
            ("other tag", field("nova.event.v9") + field("metadata"), "events[0].event: the pre-image does not start with nova.event.v1"),
            ("invalid UTF-8", metadata(scope: [0x73, 0xff]), "events[0].event.scopeId: not valid UTF-8"),
            ("NUL", metadata(scope: [0x73, 0]), "events[0].event.scopeId: must not contain NUL"),
            ("empty scope", metadata(scope: []), "events[0].event.scopeId: must not be empty"),
            ("long scope", metadata(scope: Array(repeating: 0x61, count: 257)), "events[0].event.scopeId: longer than 256 bytes"),
            ("before 1970", metadata(time: [0xff, 0, 0, 0, 0, 0, 0, 0]), "events[0].event.sourceTruthTime: "),
            ("payload not canonical", metadata(payload: #"{"b":1, "a":2}"#), "events[0].event.payload: not in RFC 8785 canonical form"),
            ("payload not an object", metadata(payload: "[1]"), "events[0].event.payload: must be a JSON object"),
            ("payload not JSON", metadata(payload: "{"), "events[0].event.payload: invalid JSON"),
            ("cut pre-image", Array(metadata().dropLast(3)), "events[0].event.payload: the pre-image ends inside it"),
            ("trailing bytes", metadata() + [1], "events[0].event: 1 bytes follow the last field of the metadata lane's pre-image"),
        ]
        for (name, preimage, message) in cases {
            #expect(Self.fault(single(preimage)).contains(message), "\(name): \(Self.fault(single(preimage)))")
        }
        #expect(Self.fault(single(metadata(), canonical: -1)).contains("events[0].event.canonicalTruthTime: "))
    }

    /// Random damage to a version 2 body (bit flips, cuts, inserted bytes) never crashes the
    /// decoder, and whatever it accepts holds only events whose content hashes to their id.
    @Test func damagedBinaryBatchesAreRefusedOrIntact() {
        let events = Self.events(seed: 11)
        let bytes = SyncBatchCodec.encode(SyncBatch(siteId: "s", storeId: "e0000000-0000-4000-8000-000000000004", firstSeq: 9, lastSeq: events.last!.seq, pendingFrom: nil, outboxSize: 0, events: events))
        var rng = SeededGenerator(seed: 5)
        var refused = 0
        for _ in 0..<3_000 {
            var body = bytes
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let at = Int.random(in: 0..<body.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: body[at] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &rng)
                case 1: body.removeSubrange(at...)
                default: body.insert(UInt8.random(in: 0...255, using: &rng), at: at)
                }
                if body.isEmpty { break }
            }
            do {
                let batch = try body.withUnsafeBufferPointer { try SyncBatchCodec.decode($0, decoder: EventDecoder()) }
                #expect(batch.events.allSatisfy { $0.event.computedEventId == $0.event.eventId })
            } catch {
                refused += 1
            }
        }
        #expect(refused > 2_000, "most damage is refused (a flipped seq or canonical time is not covered by the id)")
    }
}
