import Foundation
import NovaCore
import NovaTestSupport
import Testing

/// `nova serve` on PostgreSQL as a real process, against a private PostgreSQL cluster that the
/// tests stop and start: start-up faults, a server killed mid-run, a refused schema.
@Suite(.serialized, .timeLimit(.minutes(3))) struct HubProcessTests {
    /// Test data lies in May 2026: a retention far longer than the default 90 days keeps the
    /// maintenance service (which runs again when the server comes back) from dropping it.
    func hubConfig(_ dir: TemporaryDirectory, cluster: TestPostgres.PrivateCluster) throws -> String {
        let path = dir.file("hub.json")
        try Data(#"""
            {"database": {"type": "timescaledb", "timescaledb": {"host": "127.0.0.1", "port": \#(cluster.port), "database": "postgres", "user": "nova",
              "pool": {"connectionTimeout": 2}, "hypertable": {"retentionAfter": "1000 years"}}}, "server": {"port": 0}}
            """#.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func events(_ n: Int, offset: Int) -> String {
        RecorderProcessTests.batch(n, offset: offset).lines
    }

    @Test func unreachableAtStartThenRecovers() async throws {
        let dir = try TemporaryDirectory("nova-hub")
        defer { dir.remove() }
        let cluster = try await TestPostgres.PrivateCluster.start()
        defer { cluster.destroy() }
        try await cluster.control("stop")
        let hub = try NovaProcess(["serve", "--config", try hubConfig(dir, cluster: cluster)], directory: dir, environment: ["NOVA_DB_PASSWORD": cluster.password])
        defer { hub.kill() }
        let base = try await hub.waitUntilListening()
        let ready = try await HTTP.get("\(base)/readyz")
        #expect(ready.status == 503)
        #expect(ready.body.contains("cannot reach the server"), "\(ready.body)")
        let ingest = try await HTTP.post("\(base)/v1/events", ndjson: Self.events(10, offset: 0))
        #expect(ingest.status == 503, "\(ingest.body)")
        try await cluster.control("start")
        try await waitFor("readiness") { (try? await HTTP.get("\(base)/readyz").status) == 200 }
        #expect(try await HTTP.post("\(base)/v1/events", ndjson: Self.events(10, offset: 0)).status == 200)
        #expect(hub.stderr.contains("store not reachable, retrying"), "the log says why and that it retries")
    }

    @Test func wrongPasswordIsReportedAndRetried() async throws {
        let dir = try TemporaryDirectory("nova-hub")
        defer { dir.remove() }
        let cluster = try await TestPostgres.PrivateCluster.start()
        defer { cluster.destroy() }
        let hub = try NovaProcess(["serve", "--config", try hubConfig(dir, cluster: cluster)], directory: dir, environment: ["NOVA_DB_PASSWORD": "wrong"])
        defer { hub.kill() }
        let base = try await hub.waitUntilListening()
        try await waitFor("the refusal") { (try? await HTTP.get("\(base)/readyz").body.contains("refused the credentials")) == true }
        let ready = try await HTTP.get("\(base)/readyz")
        #expect(ready.status == 503)
        #expect(ready.body.contains("check NOVA_DB_PASSWORD"), "\(ready.body)")
        try await Task.sleep(for: .seconds(1))
        #expect(hub.process.isRunning, "nova serve keeps running and retrying")
        #expect(!hub.stderr.contains("wrong"), "the password is never logged")
    }

    @Test func serverKilledMidRunGives503ThenRecovers() async throws {
        let dir = try TemporaryDirectory("nova-hub")
        defer { dir.remove() }
        let cluster = try await TestPostgres.PrivateCluster.start()
        defer { cluster.destroy() }
        let hub = try NovaProcess(["serve", "--config", try hubConfig(dir, cluster: cluster)], directory: dir, environment: ["NOVA_DB_PASSWORD": cluster.password])
        defer { hub.kill() }
        let base = try await hub.waitUntilListening()
        try await waitFor("readiness") { (try? await HTTP.get("\(base)/readyz").status) == 200 }
        #expect(try await HTTP.post("\(base)/v1/events", ndjson: Self.events(100, offset: 0)).status == 200)
        try await cluster.control("stop")
        let failed = try await HTTP.post("\(base)/v1/events", ndjson: Self.events(100, offset: 100))
        #expect(failed.status == 503, "\(failed.body)")
        #expect(try await HTTP.get("\(base)/v1/events?scope=kill&from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z").status == 503)
        try await cluster.control("start")
        let answers = Answers()
        try await waitFor("recovery") {
            let response = try? await HTTP.post("\(base)/v1/events", ndjson: Self.events(100, offset: 100))
            await answers.add("\(response.map { "\($0.status) \($0.body)" } ?? "no answer")")
            return response?.status == 200
        }
        let stored = try await HTTP.allEventIds(base, scope: "kill")
        let first = Set(RecorderProcessTests.batch(100, offset: 0).ids)
        let said = await answers.all
        #expect(stored.count == 200 && Set(stored).count == 200, """
            \(stored.count) stored (\(stored.count { first.contains($0) }) of the first batch); answers: \(said); \(hub.stderr.suffix(3000))
            """)
    }

    @Test func schemaNewerThanTheBinaryIsRefused() async throws {
        let dir = try TemporaryDirectory("nova-hub")
        defer { dir.remove() }
        let cluster = try await TestPostgres.PrivateCluster.start()
        defer { cluster.destroy() }
        let env = ["NOVA_DB_PASSWORD": cluster.password]
        let locator = cluster.locator
        let create = try await NovaProcess.run(["schema", "create", locator], directory: dir, environment: env)
        #expect(create.status == 0, "\(create.stderr)")
        #expect(create.stdout.contains("mode: partitioned"), "\(create.stdout)")
        let check = try await NovaProcess.run(["schema", "check", locator], directory: dir, environment: env)
        #expect(check.status == 0 && check.stdout.contains("schema: v5, current"), "\(check.stdout)")
        // A v1 store (no commit-order indexes, no sync watermarks) is migrated to v5.
        for lane in Lane.allCases { try await cluster.execute(#"DROP INDEX "\#(lane.rawValue)Events_commit_order""#) }
        try await cluster.execute(#"DROP TABLE "syncSites""#)
        try await cluster.execute(#"DROP TABLE "syncSiteScopes""#)
        try await cluster.execute(#"UPDATE "novaStore" SET "value" = '1' WHERE "key" = 'schemaVersion'"#)
        let migrate = try await NovaProcess.run(["schema", "create", locator], directory: dir, environment: env)
        #expect(migrate.status == 0, "\(migrate.stderr)")
        let migrated = try await NovaProcess.run(["schema", "check", locator], directory: dir, environment: env)
        #expect(migrated.status == 0 && migrated.stdout.contains("schema: v5, current"), "\(migrated.stdout)")
        let sites = try await cluster.rows(#"SELECT count(*)::text FROM "syncSites""#)
        #expect(sites == [["0"]], "the migration created the watermarks table")
        try await cluster.execute(#"UPDATE "novaStore" SET "value" = '6' WHERE "key" = 'schemaVersion'"#)
        let hub = try NovaProcess(["serve", "--config", try hubConfig(dir, cluster: cluster)], directory: dir, environment: env)
        let status = try await hub.wait(timeout: .seconds(60))
        #expect(status != 0)
        #expect(hub.stderr.contains("schema v6 is newer than this nova"), "\(hub.stderr)")
        let refused = try await NovaProcess.run(["schema", "check", locator], directory: dir, environment: env)
        #expect(refused.status != 0 && refused.stderr.contains("newer"), "\(refused.stderr)")
    }
}

actor Answers {
    var all = [String]()
    func add(_ answer: String) { all.append(answer) }
}
