import Foundation
import NovaCore
import NovaTestSupport
import Testing

/// `database.type = "dual"` in a real `nova record`, its shadow a private PostgreSQL cluster
/// that the test stops and starts.
@Suite(.timeLimit(.minutes(4))) struct DualProcessTests {
    /// The value of a metric without labels in a Prometheus exposition (nil when absent).
    static func metric(_ name: String, in exposition: String) -> Double? {
        exposition.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    @Test func theShadowStoppedForAWhileCatchesUpAndDriftIsReportedAndRepaired() async throws {
        let dir = try TemporaryDirectory("nova-dual")
        defer { dir.remove() }
        let cluster = try await TestPostgres.PrivateCluster.start()
        defer { cluster.destroy() }
        let config = dir.file("dual.json")
        let dbPath = dir.file("edge.db")
        try Data(#"""
            {"database": {"type": "dual", "sqlite": {"path": "\#(dbPath)"},
              "timescaledb": {"host": "127.0.0.1", "port": \#(cluster.port), "database": "postgres", "user": "nova",
                "pool": {"connectionTimeout": 2, "commandTimeout": 5}, "hypertable": {"retentionAfter": "1000 years"}},
              "dual": {"primary": "sqlite", "verifyEvery": "1 second", "verifyWindow": "1000 days", "sweepEvery": "2 seconds"}},
             "server": {"port": 0}}
            """#.utf8).write(to: URL(fileURLWithPath: config))
        let environment = ["NOVA_DB_PASSWORD": cluster.password]
        let shadowLocator = "postgres://nova@127.0.0.1:\(cluster.port)/postgres"

        // The runbook's option A: a plain recorder's store backfilled by nova migrate first.
        let plainConfig = dir.file("plain.json")
        try Data(#"{"database": {"sqlite": {"path": "\#(dbPath)"}}, "server": {"port": 0}}"#.utf8).write(to: URL(fileURLWithPath: plainConfig))
        let plain = try NovaProcess(["record", "--config", plainConfig], directory: dir, name: "plain")
        let plainBase = try await plain.waitUntilListening()
        #expect(try await HTTP.post("\(plainBase)/v1/events", ndjson: RecorderProcessTests.batch(100, offset: 0).lines).status == 200)
        plain.kill(SIGTERM)
        #expect(try await plain.wait() == 0)
        let migrate = try await NovaProcess.run(["migrate", "--from", "sqlite:\(dbPath)", "--to", shadowLocator], directory: dir, environment: environment)
        #expect(migrate.status == 0, "\(migrate.stdout) \(migrate.stderr)")

        let edge = try NovaProcess(["record", "--config", config], directory: dir, environment: environment)
        defer { edge.kill() }
        let base = try await edge.waitUntilListening()
        func metrics() async -> String { (try? await HTTP.get("\(base)/metrics").body) ?? "" }
        func shadowCaughtUp() async -> Bool {
            let m = await metrics()
            return Self.metric("nova_dual_shadow_lag_events", in: m) == 0 && Self.metric("nova_dual_shadow_up", in: m) == 1
        }
        try await waitFor("dual mode to find the backfill's checkpoint") { await shadowCaughtUp() }
        #expect(Self.metric("nova_dual_shadow_written_events_total", in: await metrics()) == 0, "the backfilled events are not copied again")
        #expect(Self.metric("nova_dual_shadow_failures_total", in: await metrics()) == 0, "a shadow still connecting at start is no failure")
        #expect(try await HTTP.post("\(base)/v1/events", ndjson: RecorderProcessTests.batch(100, offset: 50).lines).status == 200)
        try await waitFor("the shadow to take the next batch") {
            let m = await metrics()
            return await shadowCaughtUp() && Self.metric("nova_dual_shadow_written_events_total", in: m) == 50
        }

        // The shadow stops: the primary keeps acknowledging and answering; the failures show.
        try await cluster.control("stop")
        #expect(try await HTTP.post("\(base)/v1/events", ndjson: RecorderProcessTests.batch(100, offset: 100).lines).status == 200)
        #expect(try await HTTP.allEventIds(base, scope: "kill").count == 200)
        try await waitFor("the failure to show in the metrics") {
            let m = await metrics()
            return (Self.metric("nova_dual_shadow_failures_total", in: m) ?? 0) > 0 && Self.metric("nova_dual_shadow_up", in: m) == 0
                && (Self.metric("nova_dual_shadow_lag_events", in: m) ?? 0) > 0
        }
        #expect(try await HTTP.post("\(base)/v1/events", ndjson: RecorderProcessTests.batch(100, offset: 200).lines).status == 200)

        // It returns: what it missed is copied; the stores are equal.
        try await cluster.control("start")
        try await waitFor("the shadow to catch up") { await shadowCaughtUp() }
        let verify = try await NovaProcess.run(["verify", "sqlite:\(dbPath)", shadowLocator], directory: dir, environment: environment)
        #expect(verify.status == 0, "\(verify.stdout) \(verify.stderr)")
        #expect(try await cluster.rows(#"SELECT count(*)::text FROM "rawEvents""#) == [["300"]])

        // Drift from outside (rows deleted in the shadow, their dedupe entries left behind) is
        // reported and repaired. Counted by the deletion itself: the comparison may repair them
        // before a later count.
        let deleted = try await cluster.rows(#"""
            WITH gone AS (DELETE FROM "rawEvents" WHERE "sequence" IN (5, 150) RETURNING 1) SELECT count(*)::text FROM gone
            """#)
        #expect(deleted == [["2"]])
        try await waitFor("the drift to be repaired") {
            (Self.metric("nova_dual_repaired_events_total", in: await metrics()) ?? 0) >= 2
        }
        #expect(try await cluster.rows(#"SELECT count(*)::text FROM "rawEvents""#) == [["300"]])
        #expect(edge.stderr.contains("the shadow store differs from the primary"), "\(edge.stderr.suffix(2000))")
        let again = try await NovaProcess.run(["verify", "sqlite:\(dbPath)", shadowLocator], directory: dir, environment: environment)
        #expect(again.status == 0, "\(again.stdout) \(again.stderr)")

        edge.kill(SIGTERM)
        #expect(try await edge.wait(timeout: .seconds(30)) == 0, "\(edge.stderr.suffix(2000))")
    }

    @Test func badDualSettingsAreRefusedNamingTheKey() async throws {
        let dir = try TemporaryDirectory("nova-dual")
        defer { dir.remove() }
        for (dual, key) in [
            (#"{"primary": "dual"}"#, "database.dual.primary"),
            (#"{"verifyEvery": "soon"}"#, "database.dual.verifyEvery"),
            (#"{"verifyWindow": "0 days"}"#, "database.dual.verifyWindow"),
            (#"{"sweepEvery": "never"}"#, "database.dual.sweepEvery"),
        ] {
            let path = dir.file("bad.json")
            try Data(#"{"database": {"type": "dual", "dual": \#(dual)}}"#.utf8).write(to: URL(fileURLWithPath: path))
            let run = try await NovaProcess.run(["record", "--config", path], directory: dir)
            #expect(run.status != 0 && run.stderr.contains(key), "\(dual): \(run.stderr)")
        }
        let path = dir.file("hub-primary.json")
        try Data(#"{"database": {"type": "dual", "dual": {"primary": "timescaledb"}}}"#.utf8).write(to: URL(fileURLWithPath: path))
        let run = try await NovaProcess.run(["record", "--config", path], directory: dir)
        #expect(run.status != 0 && run.stderr.contains("dual.primary sqlite"), "\(run.stderr)")
    }
}
