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
        defer { cluster.destroy() }
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

    /// Reads run generic plans (the read pool's sessions): on uncompressed chunks, each is the
    /// scope-leading ordering index in order (ChunkAppend or a merge), with the scope in the index
    /// condition and no Sort, also with many scopes in the range. The time-only index that
    /// `create_hypertable` adds by default, which such plans preferred, is not there, and a
    /// store from before (v4) loses it when opened.
    @Test func orderedReadsOnHypertablesUseTheOrderingIndexes() async throws {
        try await withHypertableStore { store, cluster in
            let start = Timestamp(microseconds: 1_780_000_000_000_000)
            let frames = PostgresStoreTests.frames(days: 3, perDay: 4000, start: start)
            let others = (0..<9).flatMap { k in
                frames.prefix(3000).map { Event(scopeId: "q\(k)", sourceTruthTime: $0.sourceTruthTime, canonicalTruthTime: $0.canonicalTruthTime, fields: $0.fields) }
            }
            let events = frames + others
            for batch in stride(from: 0, to: events.count, by: 5000) {
                _ = try await store.append(Array(events[batch..<min(events.count, batch + 5000)]))
            }
            _ = try await cluster.rows("ANALYZE")
            let defaultIndexes = #"SELECT indexname::text FROM pg_indexes WHERE indexname LIKE '%\_canonicalTruthTime\_idx' OR indexname = 'eventIndex_sourceTruthTime_idx'"#
            #expect(try await cluster.rows(defaultIndexes).isEmpty)
            for timebase in Timebase.allCases {
                let read = LaneRead(
                    lane: .raw, scopeId: "p", timebase: timebase, from: Timestamp(microseconds: start.microseconds + 86_400_000_000),
                    to: Timestamp(microseconds: start.microseconds + 86_401_000_000), limit: 1000)
                let plan = try await PostgresStoreTests.genericPlan(read, store: store)
                let text = plan.joined(separator: "\n")
                #expect(!plan.contains { $0.contains("Sort  (") }, "\(timebase):\n\(text)")
                #expect(plan.contains { $0.contains("Index Cond") && $0.contains(#"("scopeId" = $1)"#) }, "\(timebase):\n\(text)")
                #expect(text.contains("_order\" on _hyper_"), "the ordering index, chunk by chunk:\n\(text)")
                #expect(try await store.read(read).events.map(\.eventId) == expectedOrder(events, scopeId: "p", timebase: timebase, lanes: [.raw], range: read.from..<read.to).map(\.eventId))
            }

            // A v4 store, which has the default index, loses it when opened, compressed chunks and all.
            _ = try await cluster.rows(#"CREATE INDEX "rawEvents_canonicalTruthTime_idx" ON "rawEvents" ("canonicalTruthTime" DESC)"#)
            _ = try await cluster.rows(#"SELECT compress_chunk(c, if_not_compressed => true)::text FROM show_chunks('"rawEvents"') c"#)
            _ = try await cluster.rows(#"UPDATE "novaStore" SET "value" = '4' WHERE "key" = 'schemaVersion'"#)
            #expect(!(try await cluster.rows(defaultIndexes).isEmpty))
            let reopened = PostgresStore(location: store.location, logger: quietLogger)
            let running = Task { try await reopened.run() }
            defer { running.cancel() }
            try await reopened.waitUntilReady(timeout: .seconds(60))
            #expect(try await cluster.rows(defaultIndexes).isEmpty)
            #expect(try await cluster.rows(#"SELECT "value" FROM "novaStore" WHERE "key" = 'schemaVersion'"#) == [[String(PostgresSchema.version)]])
            let read = LaneRead(lane: .raw, scopeId: "p", timebase: .canonical, from: .min, to: .endOfTime, limit: 100_000)
            #expect(try await reopened.read(read).events.map(\.eventId) == expectedOrder(events, scopeId: "p", timebase: .canonical, lanes: [.raw], range: .min ..< .endOfTime).map(\.eventId))
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
