import NovaCore
import NovaTestSupport
import Testing

/// `ordering.json`: events ingested in the given order (with duplicates), read back per
/// scope/timebase/lane and as timelines, with small pages so that cursors are exercised.
@Suite struct OrderingVectorTests {
    @Test(arguments: Backend.allCases)
    func everyExpectedSequence(backend: Backend) async throws {
        let (store, cleanup) = try await backend.makeStore()
        defer { Task { await cleanup() } }
        let vectors = try Fixtures.vector("ordering.json")
        let decoder = EventDecoder()
        let events = try vectors["events"]!.arrayValue.map {
            try decoder.decode($0, receivedAt: .min).get()
        }
        // Several batches, so duplicates span batches as well as sit inside one.
        var total = AppendResult(ingestSeqs: [])
        for chunk in stride(from: 0, to: events.count, by: 40) {
            let result = try await store.append(Array(events[chunk..<min(chunk + 40, events.count)]))
            total.ingestSeqs += result.ingestSeqs
        }
        #expect(total.accepted == Set(events.map(\.eventId)).count)
        #expect(total.ingestSeqs.compactMap { $0 } == Array(1...Int64(total.accepted)))

        let expected = vectors["expected"]!.objectMembers
        #expect(expected.count == 24)
        for member in expected {
            let parts = member.key.split(separator: "/").map(String.init)
            let timebase = Timebase(rawValue: parts[1])!
            let lanes = parts[2] == "timeline" ? Lane.allCases : [Lane(rawValue: parts[2])!]
            let want = member.value.arrayValue.map { $0.stringValue! }
            for pageSize in [1, 2, 3, 7, 10_000] {
                let query = EventQuery(scopeId: parts[0], range: Timestamp.min..<Timestamp.endOfTime, timebase: timebase, lanes: lanes, limit: pageSize)
                let (got, _) = try await store.allPages(query)
                #expect(got.map(\.eventId.hex) == want, "\(member.key) pages of \(pageSize)")
            }
        }
    }
}
