import Foundation
import NovaCore
import NovaPostgres
import NovaSQLite
import NovaTestSupport
import Testing

/// `nova migrate` as a real process, SQLite into a real PostgreSQL database: every field kept,
/// the hub answering every query as the edge does, resumed after kills, refusing bad sources.
@Suite(.serialized, .timeLimit(.minutes(4))) struct MigrateProcessTests {
    /// An edge store holding the ordering vectors and random events of all five lanes.
    func edgeStore(_ dir: TemporaryDirectory, random count: Int) async throws -> (path: String, events: [Event]) {
        let path = dir.file("edge.db")
        let store = try SQLiteStore.open(path: path, logger: quietLogger)
        let vectors = try Fixtures.vector("ordering.json")
        var events = try vectors["events"]!.arrayValue.map { try EventDecoder().decode($0, receivedAt: .min).get() }
        var random = RandomEvents(seed: 77)
        events += random.events(count)
        for chunk in stride(from: 0, to: events.count, by: 1_000) {
            _ = try await store.append(Array(events[chunk..<min(events.count, chunk + 1_000)]))
        }
        await store.close()
        return (path, events)
    }

    func locator(_ location: PostgresLocation) -> String {
        "postgres://\(location.user)@\(location.host):\(location.port)/\(location.database)"
    }

    @Test func everyFieldArrivesAndTheHubAnswersLikeTheEdge() async throws {
        let dir = try TemporaryDirectory("nova-migrate")
        defer { dir.remove() }
        let (path, events) = try await edgeStore(dir, random: 3_000)
        let location = try await TestPostgres.createDatabase()
        defer { Task { await TestPostgres.dropDatabase(location.database) } }
        let env = ["NOVA_DB_PASSWORD": location.password ?? ""]
        let run = try await NovaProcess.run(["migrate", "--from", "sqlite:\(path)", "--to", locator(location), "--batch-size", "700"], directory: dir, environment: env)
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("result: equal"), "\(run.stdout)")
        #expect(run.stdout.contains(" new in the target, 0 already there)"), "\(run.stdout)")

        let edge = try SQLiteStore.open(path: path, options: .init(createIfMissing: false, readOnly: true), logger: quietLogger)
        let hub = PostgresStore(location: location, maintainsPartitions: false, logger: quietLogger)
        let running = Task { try await hub.run() }
        defer { running.cancel() }
        try await hub.waitUntilReady(timeout: .seconds(60))
        var compared = 0
        for scope in Set(events.map(\.scopeId)) {
            for timebase in Timebase.allCases {
                for lanes in [Lane.allCases] + Lane.allCases.map({ [$0] }) {
                    let query = EventQuery(scopeId: scope, range: Timestamp.min..<Timestamp.endOfTime, timebase: timebase, lanes: lanes, limit: 500)
                    let want = try await edge.allPages(query).events
                    let got = try await hub.allPages(query).events
                    #expect(got == want, "\(scope) \(timebase) \(lanes)")
                    compared += want.count
                }
            }
        }
        #expect(compared > 6_000)
        let sourceSeqs = try await edge.committed(after: 0, limit: 100_000).map(\.seq)
        let targetSeqs = try await hub.committed(after: 0, limit: 100_000).map(\.seq)
        #expect(targetSeqs == sourceSeqs, "an empty target keeps the source's ingestSeq")
        await edge.close()

        let again = try await NovaProcess.run(["migrate", "--from", "sqlite:\(path)", "--to", locator(location)], directory: dir, environment: env)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stdout.contains("copied: 0 events"), "a finished migration copies nothing: \(again.stdout)")
        #expect(again.stdout.contains("result: equal"))

        // Two events ten thousand years apart: the comparison crosses the empty stretch in
        // widening windows (at 1-minute buckets, one window at a time took about 40 minutes).
        let far = [Timestamp(microseconds: 1), Timestamp.max].map { time in
            Event(scopeId: "far", sourceTruthTime: time, canonicalTruthTime: time, fields: .metadata(metadataType: "clock", payload: CanonicalPayload([])))
        }
        let writer = try SQLiteStore.open(path: path, logger: quietLogger)
        _ = try await writer.append(far)
        await writer.close()
        let started = ContinuousClock.now
        let extremes = try await NovaProcess.run(["migrate", "--from", "sqlite:\(path)", "--to", locator(location), "--bucket", "1m"], directory: dir, environment: env)
        #expect(extremes.status == 0 && extremes.stdout.contains("copied: 2 events (2 new in the target"), "\(extremes.stdout)\(extremes.stderr)")
        #expect(extremes.stdout.contains("scope far: 2 vs 2 events in 2 buckets, \(Timestamp(microseconds: 1)) to \(Timestamp.max) (inclusive): equal"), "\(extremes.stdout)")
        #expect(ContinuousClock.now - started < .seconds(60), "took \(ContinuousClock.now - started)")
        #expect(extremes.stdout.contains("note: the oldest event copied is from 1970-01-01"), "a hub's retention would delete it: \(extremes.stdout)")
        // A bucket too wide to be of use is refused, not an arithmetic overflow.
        let wide = try await NovaProcess.run(["verify", "sqlite:\(path)", locator(location), "--bucket", "1000000d"], directory: dir, environment: env)
        #expect(wide.status != 0 && wide.stderr.contains("--bucket: must be a positive width up to 36500d"), "\(wide.stderr)")
        let widest = try await NovaProcess.run(["verify", "sqlite:\(path)", locator(location), "--bucket", "36500d"], directory: dir, environment: env)
        #expect(widest.status == 0 && widest.stdout.contains("result: equal"), "\(widest.stdout)\(widest.stderr)")
    }

    @Test func killedRunsResumeFromTheirCheckpointAndComplete() async throws {
        let dir = try TemporaryDirectory("nova-migrate")
        defer { dir.remove() }
        let (path, events) = try await edgeStore(dir, random: 40_000)
        let location = try await TestPostgres.createDatabase()
        defer { Task { await TestPostgres.dropDatabase(location.database) } }
        let env = ["NOVA_DB_PASSWORD": location.password ?? ""]
        let arguments = ["migrate", "--from", "sqlite:\(path)", "--to", locator(location), "--batch-size", "500"]
        // The target's checkpoint (0 before the first batch, or before the schema exists).
        let checkpoint: @Sendable () async -> Int64 = {
            (try? await TestPostgres.withConnection(location) { conn in
                try await conn.query(#"SELECT COALESCE(max("ackedSeq"), 0) FROM "syncSites""#, logger: quietLogger).collect().first!.decode(Int64.self)
            }) ?? 0
        }
        var resumed = 0
        for _ in 0..<3 {
            // Killed at a random moment after its first committed batch (waited for, not assumed
            // from a delay, which a loaded machine made too short).
            let p = try NovaProcess(arguments, directory: dir, environment: env)
            try await waitFor("a first checkpoint") { await checkpoint() > 0 || !p.process.isRunning }
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...1_500)))
            p.kill()
            _ = try await p.wait()
            // A second run, killed as soon as it has said where it starts.
            let next = try NovaProcess(arguments + ["--no-verify"], directory: dir, environment: env)
            try await waitFor("the restarted run to say where it starts") {
                next.stdout.contains("resuming after position") || next.stdout.contains("copied:") || !next.process.isRunning
            }
            next.kill()
            _ = try await next.wait()
            if next.stdout.contains("resuming after position") { resumed += 1 }
        }
        #expect(resumed == 3, "every killed run is resumed, not started over")
        let last = try await NovaProcess.run(arguments, directory: dir, environment: env)
        #expect(last.status == 0, "\(last.stdout)\(last.stderr)")
        #expect(last.stdout.contains("result: equal"), "\(last.stdout)")
        let rows = try await TestPostgres.withConnection(location) { conn in
            try await conn.query(#"SELECT count(*), count(DISTINCT "eventId") FROM "eventIndex""#, logger: quietLogger).collect().first!.decode((Int64, Int64).self)
        }
        let unique = Int64(Set(events.map(\.eventId)).count)
        #expect(rows.0 == unique && rows.1 == unique, "nothing missing, nothing doubled: \(rows) of \(unique)")
    }

    @Test func aTargetLostMidRunStopsTheCopyResumablyWithTheReason() async throws {
        let dir = try TemporaryDirectory("nova-migrate")
        defer { dir.remove() }
        let (path, events) = try await edgeStore(dir, random: 30_000)
        let cluster = try await TestPostgres.PrivateCluster.start()
        defer { cluster.destroy() }
        let env = ["NOVA_DB_PASSWORD": cluster.password]
        let arguments = ["migrate", "--from", "sqlite:\(path)", "--to", cluster.locator, "--batch-size", "300"]
        let run = try NovaProcess(arguments, directory: dir, environment: env)
        // Stop the server once the copy is under way.
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            let acked = try? await cluster.rows(#"SELECT "ackedSeq"::text FROM "syncSites""#)
            if let value = acked?.first?.first, let n = Int(value), n > 0 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        try await cluster.control("stop")
        let status = try await run.wait(timeout: .seconds(120))
        #expect(status != 0)
        #expect(run.stderr.contains("run the same command again to resume"), "\(run.stderr)")
        try await cluster.control("start")
        let again = try await NovaProcess.run(arguments, directory: dir, environment: env)
        #expect(again.status == 0, "\(again.stdout)\(again.stderr)")
        #expect(again.stdout.contains("resuming after position"), "\(again.stdout)")
        #expect(again.stdout.contains("result: equal"), "\(again.stdout)")
        let rows = try await cluster.rows(#"SELECT count(*)::text FROM "eventIndex""#)
        #expect(rows == [["\(Set(events.map(\.eventId)).count)"]])
    }

    @Test func badSourcesAndAnUnreachableTargetAreRefusedWithTheirReason() async throws {
        let dir = try TemporaryDirectory("nova-migrate")
        defer { dir.remove() }
        let location = try await TestPostgres.createDatabase()
        defer { Task { await TestPostgres.dropDatabase(location.database) } }
        let env = ["NOVA_DB_PASSWORD": location.password ?? ""]
        let target = locator(location)
        let text = dir.file("notes.txt")
        try Data("not a database".utf8).write(to: URL(fileURLWithPath: text))
        let foreign = try await NovaProcess.run(["migrate", "--from", "sqlite:\(text)", "--to", target], directory: dir, environment: env)
        // Exit 2: could not run, which a script tells apart from 1, "the stores differ".
        #expect(foreign.status == 2 && foreign.stderr.contains("not a SQLite database"), "\(foreign.stderr)")
        let missing = try await NovaProcess.run(["migrate", "--from", "sqlite:\(dir.file("none.db"))", "--to", target], directory: dir, environment: env)
        #expect(missing.status == 2 && missing.stderr.contains("no such file"), "\(missing.stderr)")
        let emptyFile = dir.file("empty.db")
        FileManager.default.createFile(atPath: emptyFile, contents: Data())
        let empty = try await NovaProcess.run(["migrate", "--from", "sqlite:\(emptyFile)", "--to", target], directory: dir, environment: env)
        #expect(empty.status == 2 && empty.stderr.contains("not a NOVA store (empty, or no storeId)"), "\(empty.stderr)")
        let (path, _) = try await edgeStore(dir, random: 10)
        let unreachable = try await NovaProcess.run(
            ["migrate", "--from", "sqlite:\(path)", "--to", "postgres://nova@127.0.0.1:\(try freePort())/nova"], directory: dir, environment: env)
        #expect(unreachable.status == 2 && unreachable.stderr.contains("127.0.0.1"), "\(unreachable.stderr)")
        // Refusals that no retry can pass end the command at once (a server retries them).
        var started = ContinuousClock.now
        let wrongPassword = try await NovaProcess.run(["migrate", "--from", "sqlite:\(path)", "--to", target], directory: dir, environment: ["NOVA_DB_PASSWORD": "wrong"])
        #expect(wrongPassword.status == 2 && wrongPassword.stderr.contains("refused the credentials"), "\(wrongPassword.stderr)")
        #expect(ContinuousClock.now - started < .seconds(8), "gave up at once, not after retrying")
        started = ContinuousClock.now
        let noDatabase = try await NovaProcess.run(
            ["migrate", "--from", "sqlite:\(path)", "--to", target.replacingOccurrences(of: "/\(location.database)", with: "/none_\(location.database)")],
            directory: dir, environment: env)
        #expect(noDatabase.status == 2 && noDatabase.stderr.contains("does not exist"), "\(noDatabase.stderr)")
        #expect(ContinuousClock.now - started < .seconds(8), "gave up at once, not after retrying")
        #expect(try await TestPostgres.withConnection(location) { conn in
            try await conn.query("SELECT count(*) FROM pg_tables WHERE tablename = 'eventIndex'", logger: quietLogger).collect().first!.decode(Int64.self)
        } == 0, "a refused source leaves the target untouched")
    }
}
