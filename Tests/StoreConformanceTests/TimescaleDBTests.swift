import Foundation
import NovaCore
@testable import NovaPostgres
import NovaTestSupport
import Testing

/// The hypertable mode, where the TimescaleDB extension is installed (it is in no registry of
/// the build machines, so elsewhere these tests show as skipped, by name). Each test starts its
/// own cluster with the extension preloaded; the shared test server stays without it, so the
/// rest of the suite exercises the portable mode.
@Suite(.enabled(if: TestPostgres.timescaleDBInstalled, "the timescaledb extension is not installed"), .serialized, .timeLimit(.minutes(3)))
struct TimescaleDBTests {
    static let options = "-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"

    func withHypertableStore(_ body: (PostgresStore, TestPostgres.PrivateCluster) async throws -> Void) async throws {
        let cluster = try await TestPostgres.PrivateCluster.start(options: Self.options)
        defer { Task { try? await cluster.control("destroy") } }
        var location = try cluster.location()
        location.hypertable.retentionAfter = "1000 years"
        let store = PostgresStore(location: location, logger: quietLogger)
        let running = Task { try await store.run() }
        defer { running.cancel() }
        try await store.waitUntilReady(timeout: .seconds(60))
        try await body(store, cluster)
    }

    @Test func hypertablesPoliciesCompressedChunksAndLateInserts() async throws {
        try await withHypertableStore { store, cluster in
            #expect(store.mode == "timescaledb")
            let report = try await store.schemaReport()
            #expect(report.contains("mode: timescaledb"), "\(report)")

            // Three days of frames: one chunk per day per lane (chunk interval 1 day).
            let start = Timestamp(microseconds: 1_780_000_000_000_000)
            let frames = PostgresStoreTests.frames(days: 3, perDay: 400, start: start)
            for batch in stride(from: 0, to: frames.count, by: 500) {
                _ = try await store.append(Array(frames[batch..<min(frames.count, batch + 500)]))
            }
            let chunks = try await cluster.rows(#"SELECT count(*)::text FROM timescaledb_information.chunks WHERE hypertable_name = 'rawEvents'"#)
            #expect(Int(chunks.first?.first ?? "") ?? 0 >= 3, "\(chunks)")
            let jobs = Set(try await cluster.rows(#"SELECT proc_name::text FROM timescaledb_information.jobs WHERE hypertable_name = 'rawEvents'"#).map { $0[0] })
            #expect(jobs.isSuperset(of: ["policy_compression", "policy_retention"]), "\(jobs)")
            let settings = try await cluster.rows(#"SELECT segmentby_column_index::text, attname::text FROM timescaledb_information.compression_settings WHERE hypertable_name = 'rawEvents' AND segmentby_column_index IS NOT NULL"#)
            #expect(settings.map { $0[1] } == ["scopeId"], "\(settings)")

            // Compress every chunk, as the policy would once they are old enough.
            _ = try await cluster.rows(#"SELECT compress_chunk(c, if_not_compressed => true)::text FROM show_chunks('"rawEvents"') c"#)
            let compressed = try await cluster.rows(#"SELECT count(*)::text FROM timescaledb_information.chunks WHERE hypertable_name = 'rawEvents' AND is_compressed"#)
            #expect(compressed.first?.first == chunks.first?.first, "every chunk compressed: \(compressed) of \(chunks)")

            // Compressed chunks still answer ordered queries, paged by cursors.
            let query = EventQuery(scopeId: "p", range: Timestamp.min..<Timestamp.endOfTime, timebase: .canonical, lanes: [.raw], limit: 97)
            let before = try await store.allPages(query).events
            #expect(before.map(\.eventId) == expectedOrder(frames, scopeId: "p", timebase: .canonical, lanes: [.raw], range: Timestamp.min..<Timestamp.endOfTime).map(\.eventId))

            // Late events into the compressed chunks: new ones are stored, copies deduplicated.
            let late = (0..<50).map { k in
                let t = Timestamp(microseconds: start.microseconds + Int64(k) * 3_600_000_000 + 500_000)
                return Event(scopeId: "p", sourceTruthTime: t, canonicalTruthTime: t, fields: .raw(connectionId: "late", sequence: Int64(k), bytes: [1, 2]))
            }
            let result = try await store.append(late + Array(frames.prefix(100)))
            #expect(result.accepted == 50)
            #expect(result.duplicates == 100)
            let again = try await store.append(late)
            #expect(again.accepted == 0 && again.duplicates == 50)
            let after = try await store.allPages(query).events
            #expect(after.map(\.eventId) == expectedOrder(frames + late, scopeId: "p", timebase: .canonical, lanes: [.raw], range: Timestamp.min..<Timestamp.endOfTime).map(\.eventId))
            let committed = try await store.committed(after: 0, limit: 10_000)
            #expect(committed.count == frames.count + late.count)
            #expect(committed.map(\.seq) == Array(1...Int64(frames.count + late.count)))
        }
    }

    /// The conformance vectors on hypertables too.
    @Test func orderingVectorsOnHypertables() async throws {
        try await withHypertableStore { store, _ in
            var random = RandomEvents(seed: 11)
            let events = random.events(600)
            for batch in stride(from: 0, to: events.count, by: 150) {
                _ = try await store.append(Array(events[batch..<min(events.count, batch + 150)]))
            }
            for scope in random.scopes {
                for timebase in Timebase.allCases {
                    let range = Timestamp.min..<Timestamp.endOfTime
                    let got = try await store.allPages(EventQuery(scopeId: scope, range: range, timebase: timebase, limit: 7)).events
                    #expect(got.map(\.eventId) == expectedOrder(events, scopeId: scope, timebase: timebase, lanes: Lane.allCases, range: range).map(\.eventId))
                }
            }
        }
    }
}
