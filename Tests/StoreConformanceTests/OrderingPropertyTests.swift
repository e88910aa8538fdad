import NovaCore
import NovaTestSupport
import Testing

/// The ordering contract as a property: random events (equal times, duplicate content with other
/// canonical times, non-ASCII and case-sensitive ids) paged in random sizes equal the answer sorted
/// in memory.
@Suite struct OrderingPropertyTests {
    @Test(arguments: Backend.allCases)
    func randomEventsRandomPages(backend: Backend) async throws {
        for seed: UInt64 in [1, 2, 3] {
            let (store, cleanup) = try await backend.makeStore()
            var gen = RandomEvents(seed: seed)
            let events = gen.events(600)
            var rng = SeededGenerator(seed: seed &* 31)
            var start = 0
            while start < events.count {
                let end = min(events.count, start + Int.random(in: 1...150, using: &rng))
                _ = try await store.append(Array(events[start..<end]))
                start = end
            }
            for _ in 0..<25 {
                let scope = gen.scopes.randomElement(using: &rng)!
                let timebase = Timebase.allCases.randomElement(using: &rng)!
                var lanes = Lane.allCases.filter { _ in Bool.random(using: &rng) }
                if lanes.isEmpty { lanes = [.raw] }
                let a = gen.time(), b = gen.time()
                let range = min(a, b)..<Timestamp(microseconds: max(a, b).microseconds + 1)
                var filters = [Lane: String]()
                if Int.random(in: 0..<4, using: &rng) == 0, let lane = lanes.randomElement(using: &rng) {
                    filters[lane] = RandomEvents.names.randomElement(using: &rng)!
                }
                let want = expectedOrder(events, scopeId: scope, timebase: timebase, lanes: lanes, range: range, filters: filters)
                let pageSize = Int.random(in: 1...40, using: &rng)
                let query = EventQuery(scopeId: scope, range: range, timebase: timebase, lanes: lanes, filters: filters, limit: pageSize)
                let (got, pages) = try await store.allPages(query)
                #expect(got == want, "seed \(seed) \(scope) \(timebase) \(lanes) \(filters) page \(pageSize)")
                #expect(pages == max(1, (want.count + pageSize - 1) / pageSize), "no empty trailing page")
            }
            await cleanup()
        }
    }
}
