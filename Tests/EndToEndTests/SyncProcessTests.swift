import Foundation
import NovaCore
import NovaPostgres
import NovaTestSupport
import Testing

/// Sync with real processes (sync.md, Guarantees): `nova record` edges shipping to a `nova serve`
/// hub on PostgreSQL, killed with SIGKILL under continuous ingest, cut off, replaced; then
/// `nova verify` must find no difference and the hub no duplicate.
@Suite(.serialized, .timeLimit(.minutes(4))) struct SyncProcessTests {
    @Test func killsOfHubAndEdgeUnderLoadLoseNothingAndStoreNothingTwice() async throws {
        let rig = try await SyncRig()
        defer { rig.cleanup() }
        try await rig.startHub()
        let edge = try rig.edge("edge-a", site: "site-a", batchSize: 300)
        try await edge.start()
        let loader = Loader(edge: edge)
        let loading = Task { await loader.run() }
        for round in 0..<2 {
            try await Task.sleep(for: .milliseconds(1500))
            rig.hub?.kill()  // mid-batch: the edge is shipping continuously
            _ = try await rig.hub?.wait()
            try await Task.sleep(for: .milliseconds(700))
            try await rig.startHub()
            try await Task.sleep(for: .milliseconds(1500))
            edge.process?.kill()  // mid-ship and mid-ingest
            _ = try await edge.process?.wait()
            try await edge.start()
            #expect(edge.process?.process.isRunning == true, "round \(round)")
        }
        try await Task.sleep(for: .seconds(1))
        await loader.stop()
        await loading.value
        let acked = await loader.acked
        #expect(acked.count >= 1_000, "the loader kept ingesting (\(acked.count) acknowledged)")

        try await edge.waitUntilDrained(hub: rig.hubURL)
        let edgeIds = try await HTTP.allEventIds(edge.base, scope: "kill")
        let hubIds = try await HTTP.allEventIds(rig.hubURL, scope: "kill")
        #expect(Set(hubIds).count == hubIds.count, "no event is stored twice at the hub")
        let missing = Set(edgeIds).subtracting(hubIds).count
        let extra = Set(hubIds).subtracting(edgeIds).count
        #expect(missing == 0 && extra == 0, "the hub holds exactly the edge's \(edgeIds.count) events: \(missing) missing, \(extra) extra")
        #expect(acked.subtracting(hubIds).count == 0, "every acknowledged event reached the hub")
        let verify = try await NovaProcess.run(["verify", "sqlite:\(edge.dbPath)", rig.hubURL], directory: rig.dir)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        #expect(verify.stdout.contains("result: equal"), "\(verify.stdout)")

        // Watermarks and lag are visible on both sides, and in the metrics.
        let sites = try JSONParser.parse(try await HTTP.get("\(rig.hubURL)/v1/sync/sites").body)
        guard case .array(let list)? = sites["sites"], let site = list.first(where: { $0["siteId"] == .string("site-a") }) else {
            Issue.record("no site-a in \(sites)")
            return
        }
        guard case .number(let lag)? = site["lagSeconds"] else { Issue.record("no lag in \(site)"); return }
        #expect(lag.double < 5, "an idle, drained site's lag stays small: \(site)")
        // A drained edge has nothing pending in any scope: it says so per scope too.
        #expect(site["completeThroughByScope"] == .object([]) && site["otherScopesCompleteThrough"] != .null, "\(site)")
        #expect(try await HTTP.get("\(rig.hubURL)/metrics").body.contains(#"nova_sync_applied_events_total{site="site-a"}"#))
        let edgeMetrics = try await HTTP.get("\(edge.base)/metrics").body
        #expect(edgeMetrics.contains("nova_sync_pending_events 0"), "\(edgeMetrics)")
        #expect(edgeMetrics.contains("nova_sync_shipped_events_total"))
    }

    @Test func aLinkCutUnderLoadDrainsOnceRestoredWhileTheEdgeKeepsRecording() async throws {
        let rig = try await SyncRig()
        defer { rig.cleanup() }
        try await rig.startHub()
        let edge = try rig.edge("edge-a", site: "site-a", batchSize: 500)
        try await edge.start()
        let loader = Loader(edge: edge)
        let loading = Task { await loader.run() }
        try await Task.sleep(for: .seconds(1))
        rig.hub?.kill(SIGTERM)
        _ = try await rig.hub?.wait()
        let cutAt = await loader.acked.count
        // The edge keeps recording while cut off: 500 more events acknowledged (how long that
        // takes depends on the machine's load, so it is waited for, within a bound).
        let deadline = ContinuousClock.now + .seconds(30)
        while await loader.acked.count <= cutAt + 500 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        let during = try JSONParser.parse(try await HTTP.get("\(edge.base)/v1/sync/status").body)
        #expect(during["upstreamReachable"] == .bool(false), "\(during)")
        guard case .number(let pending)? = during["pendingEvents"], case .string? = during["lastError"] else {
            Issue.record("status lacks pendingEvents or lastError: \(during)")
            return
        }
        #expect(pending.double > 0, "events recorded during the cut wait in the outbox")
        // The lag gauge grows through the cut (it is refreshed every second, not only on acks).
        func lag() async throws -> Double? {
            let exposition = try await HTTP.get("\(edge.base)/metrics").body
            return exposition.split(separator: "\n").first { $0.hasPrefix("nova_sync_lag_seconds ") }.flatMap { Double($0.split(separator: " ")[1]) }
        }
        let lagBefore = try #require(try await lag())
        try await Task.sleep(for: .milliseconds(2_500))
        let lagAfter = try #require(try await lag())
        #expect(lagAfter >= lagBefore + 1, "lag \(lagBefore) s, then \(lagAfter) s, 2.5 s later during the cut")
        #expect(await loader.acked.count > cutAt + 500, "the edge kept recording while cut off")
        #expect(await loader.failures == 0, "no ingest request failed during the cut")
        try await rig.startHub()
        try await Task.sleep(for: .seconds(1))
        await loader.stop()
        await loading.value
        try await edge.waitUntilDrained(hub: rig.hubURL)
        let verify = try await NovaProcess.run(["verify", "sqlite:\(edge.dbPath)", rig.hubURL, "--scope", "kill"], directory: rig.dir)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        #expect(try await HTTP.allEventIds(rig.hubURL, scope: "kill").count == HTTP.allEventIds(edge.base, scope: "kill").count)
    }

    /// A box replaced (a new, empty store) and one restored from a `nova backup` (a copy holding
    /// fewer events than the hub acknowledged for its `storeId`): each ships under a new `storeId`,
    /// the hub dedupes the overlap, and what they record afterwards is never taken for a replay.
    @Test func aReplacedOrRestoredEdgeStoreStartsANewSequenceAndItsOverlapIsDeduped() async throws {
        let rig = try await SyncRig()
        defer { rig.cleanup() }
        try await rig.startHub()
        let edge = try rig.edge("edge-a", site: "site-a", batchSize: 400)
        try await edge.start()
        try await edge.recordAndShip(RecorderProcessTests.batch(1_000, offset: 0).lines, hub: rig.hubURL)
        let backupPath = rig.dir.file("edge-a-backup.db")
        let backup = try await NovaProcess.run(["backup", "sqlite:\(edge.dbPath)", backupPath], directory: rig.dir)
        #expect(backup.status == 0 && backup.stdout.contains("ingestSeq 1000,"), "\(backup.stdout)\(backup.stderr)")
        try await edge.recordAndShip(RecorderProcessTests.batch(500, offset: 1_000).lines, hub: rig.hubURL)
        var stores = [try await storeId(edge)]

        // The box is replaced: a new, empty database file, then events overlapping the old ones.
        try await edge.replaceStore(with: nil)
        try await edge.recordAndShip(RecorderProcessTests.batch(1_500, offset: 500).lines, hub: rig.hubURL)
        stores.append(try await storeId(edge))
        var hubIds = try await HTTP.allEventIds(rig.hubURL, scope: "kill")
        #expect(hubIds.count == 2_000, "1,500 old + 500 new; the 1,000 overlapping were deduped")
        #expect(Set(hubIds).count == hubIds.count)
        #expect(try await eventsApplied(rig) == [500, 1_500], "one watermark per (siteId, storeId), each counting what it added")

        // Restored from the backup: the hub acknowledged 1,500 of its storeId, the copy holds 1,000.
        try await edge.replaceStore(with: backupPath)
        let (later, laterIds) = RecorderProcessTests.batch(300, offset: 5_000)
        try await edge.recordAndShip(later, hub: rig.hubURL)
        stores.append(try await storeId(edge))
        #expect(Set(stores).count == 3, "\(stores)")
        hubIds = try await HTTP.allEventIds(rig.hubURL, scope: "kill")
        #expect(Set(hubIds).count == hubIds.count)
        #expect(hubIds.count == 2_300, "the 300 recorded after the restore reached the hub")
        #expect(Set(laterIds).isSubset(of: Set(hubIds)))
        #expect(try await eventsApplied(rig) == [300, 500, 1_500])
    }

    func storeId(_ edge: SyncRig.Edge) async throws -> String {
        try JSONParser.parse(try await HTTP.get("\(edge.base)/v1/sync/status").body)["storeId"]?.stringValue ?? ""
    }

    /// `eventsApplied` of every (siteId, storeId) the hub knows, sorted.
    func eventsApplied(_ rig: SyncRig) async throws -> [Int64] {
        let sites = try JSONParser.parse(try await HTTP.get("\(rig.hubURL)/v1/sync/sites").body)
        guard case .array(let list)? = sites["sites"] else { throw ProcessError("no sites in \(sites)") }
        return list.compactMap { site -> Int64? in if case .number(let n)? = site["eventsApplied"] { n.int64 } else { nil } }.sorted()
    }

    /// An edge that has not reached its hub since it started still shows how far behind the hub
    /// is: at least the age of its oldest pending event (the gauge used to read 0 until a first
    /// acknowledgement).
    @Test func anEdgeThatNeverReachedItsHubShowsItsLag() async throws {
        let dir = try TemporaryDirectory("nova-sync")
        defer { dir.remove() }
        let config = dir.file("edge.json")
        try Data(#"""
            {"core": {"siteId": "site-a"}, "database": {"sqlite": {"path": "\#(dir.file("edge.db"))"}}, "server": {"port": 0},
             "sync": {"enabled": true, "upstream": "http://127.0.0.1:\#(try freePort())", "maxBackoffSeconds": 1}}
            """#.utf8).write(to: URL(fileURLWithPath: config))
        let edge = try NovaProcess(["record", "--config", config], directory: dir, name: "edge")
        defer { edge.kill() }
        let base = try await edge.waitUntilListening()
        // Recorded with canonical times of May 2026, months before any clock this runs on.
        #expect(try await HTTP.post("\(base)/v1/events", ndjson: RecorderProcessTests.batch(50, offset: 0).lines).status == 200)
        let deadline = ContinuousClock.now + .seconds(20)
        var lag = 0.0
        repeat {
            try await Task.sleep(for: .milliseconds(500))
            let exposition = try await HTTP.get("\(base)/metrics").body
            lag = exposition.split(separator: "\n").first { $0.hasPrefix("nova_sync_lag_seconds ") }.flatMap { Double($0.split(separator: " ")[1]) } ?? 0
        } while lag < 86_400 && ContinuousClock.now < deadline
        #expect(lag > 86_400, "the lag of an edge the hub never heard from: \(lag) s")
    }

    @Test func largeEventsReachAHubWithASmallBodyLimitInSmallerBatches() async throws {
        // 30 frames of 200,000 random bytes (6 MB, incompressible): one batch by count, which the
        // hub, limited to 1,000,000-byte bodies, refuses as too large until the edge sends halves.
        let rig = try await SyncRig(hubServer: #", "maxBodyBytes": 1000000"#)
        defer { rig.cleanup() }
        try await rig.startHub()
        let edge = try rig.edge("edge-a", site: "site-a", batchSize: 5_000)
        try await edge.start()
        var lines = ""
        var ids = [String]()
        for k in 0..<30 {
            let time = Timestamp(microseconds: 1_780_000_000_000_000 + Int64(k) * 1_000)
            let event = Event(
                scopeId: "big", sourceTruthTime: time, canonicalTruthTime: time,
                fields: .raw(connectionId: "dev", sequence: Int64(k), bytes: (0..<200_000).map { _ in UInt8.random(in: 0...255) }))
            lines += event.json + "\n"
            ids.append(event.eventId.hex)
        }
        #expect(try await HTTP.post("\(edge.base)/v1/events", ndjson: lines).status == 200)
        try await edge.waitUntilDrained(hub: rig.hubURL)
        #expect(try await HTTP.allEventIds(rig.hubURL, scope: "big").sorted() == ids.sorted())
        let log = edge.process?.stderr ?? ""
        #expect(log.contains("too large (413)"), "the edge says why it shrank its batches: \(log.suffix(2000))")
        // An edge takes no sync batches itself (it would ship them on as its own).
        let refused = try await HTTP.get("\(edge.base)/v1/sync/sites")
        #expect(refused.status == 404 && refused.body.contains("nova serve"), "\(refused.status) \(refused.body)")
    }

    @Test func verifyFindsALostHubRowAndRepairRestoresIt() async throws {
        let rig = try await SyncRig()
        defer { rig.cleanup() }
        try await rig.startHub()
        let edge = try rig.edge("edge-a", site: "site-a", batchSize: 1_000)
        try await edge.start()
        let (lines, ids) = RecorderProcessTests.batch(600, offset: 0)
        #expect(try await HTTP.post("\(edge.base)/v1/events", ndjson: lines).status == 200)
        try await edge.waitUntilDrained(hub: rig.hubURL)

        // Two events lost at the hub: one with its dedupe entry, one whose entry stayed behind.
        let lost = ids[321]
        let rowOnly = ids[322]
        try await TestPostgres.withConnection(rig.location) { conn in
            try await conn.query(#"DELETE FROM "rawEvents" WHERE "eventId" = decode(\#(lost), 'hex')"#, logger: quietLogger)
            try await conn.query(#"DELETE FROM "eventIndex" WHERE "eventId" = decode(\#(lost), 'hex')"#, logger: quietLogger)
            try await conn.query(#"DELETE FROM "rawEvents" WHERE "eventId" = decode(\#(rowOnly), 'hex')"#, logger: quietLogger)
        }
        let found = try await NovaProcess.run(["verify", "sqlite:\(edge.dbPath)", rig.hubURL, "--scope", "kill", "--bucket", "1s"], directory: rig.dir)
        #expect(found.status == 1, "\(found.stdout)\(found.stderr)")
        #expect(found.stdout.contains("1 differing buckets"), "\(found.stdout)")
        #expect(found.stdout.contains("left 600  right 598"), "\(found.stdout)")

        let repair = try await NovaProcess.run(["sync", "repair", "--config", edge.configPath, "--bucket", "1s"], directory: rig.dir)
        #expect(repair.status == 0, "\(repair.stdout)\(repair.stderr)")
        #expect(repair.stdout.contains("re-sent 600 events"), "\(repair.stdout)")
        #expect(repair.stdout.contains("result: equal"), "\(repair.stdout)")
        let again = try await NovaProcess.run(["verify", "sqlite:\(edge.dbPath)", rig.hubURL], directory: rig.dir)
        #expect(again.status == 0, "\(again.stdout)\(again.stderr)")
        // Store locators on both sides: the edge's file and the hub's database, read directly.
        let direct = try await NovaProcess.run(
            ["verify", "sqlite:\(edge.dbPath)", "postgres://\(rig.location.user)@\(rig.location.host):\(rig.location.port)/\(rig.location.database)"],
            directory: rig.dir, environment: ["NOVA_DB_PASSWORD": rig.location.password ?? ""])
        #expect(direct.status == 0, "\(direct.stdout)\(direct.stderr)")
        #expect(direct.stdout.contains("600 vs 600 events"), "\(direct.stdout)")
        let atHub = try await HTTP.allEventIds(rig.hubURL, scope: "kill")
        #expect(atHub.contains(lost) && atHub.contains(rowOnly))

        // A scope neither side holds (a typo) is no "equal": exit 2, naming it.
        for command in [["verify", "sqlite:\(edge.dbPath)", rig.hubURL], ["sync", "repair", "--config", edge.configPath]] {
            let typo = try await NovaProcess.run(command + ["--scope", "Kill"], directory: rig.dir)
            #expect(typo.status == 2 && typo.stderr.contains(#"neither side holds any event of "Kill""#), "\(typo.stdout)\(typo.stderr)")
        }
        // Restarted with nothing to ship, the edge says when the hub last confirmed its watermark.
        edge.process?.kill(SIGTERM)
        _ = try await edge.process?.wait()
        try await edge.start()
        var lastAckAt: JSONValue?
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            lastAckAt = try JSONParser.parse(try await HTTP.get("\(edge.base)/v1/sync/status").body)["lastAckAt"]
            if case .string? = lastAckAt { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        guard case .string? = lastAckAt else {
            Issue.record("lastAckAt after a restart: \(String(describing: lastAckAt))")
            return
        }
        // A hub that cannot be reached: the repair could not run (2), which is not "still differs" (1).
        rig.hub?.kill(SIGTERM)
        _ = try await rig.hub?.wait()
        let unreachable = try await NovaProcess.run(["sync", "repair", "--config", edge.configPath], directory: rig.dir)
        #expect(unreachable.status == 2, "\(unreachable.stdout)\(unreachable.stderr)")
    }
}

extension SyncProcessTests {
    /// Tokens per side and per role across real processes: `nova verify` of an edge and a hub
    /// whose read tokens differ, and `nova sync forget` of a retired site with the hub's admin
    /// token (a read token is refused).
    @Test func verifyTakesATokenPerSideAndForgetRetiresASite() async throws {
        func token(_ secret: String, _ roles: String, site: String? = nil) -> String {
            #"{"sha256": "\#(TokenHash.sha256Hex(secret))", "roles": [\#(roles)]\#(site.map { #", "siteId": "\#($0)""# } ?? "")}"#
        }
        let (hubRead, hubAdmin, siteToken, edgeToken) = ("hub-read-token", "hub-admin-token", "site-a-sync-token", "edge-token")
        let rig = try await SyncRig(
            hubServer: #", "tokens": [\#(token(hubRead, #""read""#)), \#(token(hubAdmin, #""admin""#)), \#(token(siteToken, #""sync""#, site: "site-a"))]"#)
        defer { rig.cleanup() }
        try await rig.startHub()
        let edge = try rig.edge(
            "edge-a", site: "site-a", batchSize: 1_000, server: #", "tokens": [\#(token(edgeToken, #""read", "ingest""#))]"#, readToken: edgeToken,
            environment: ["NOVA_SYNC_TOKEN": siteToken])
        try await edge.start()
        let (lines, _) = RecorderProcessTests.batch(300, offset: 0)
        #expect(try await HTTP.post("\(edge.base)/v1/events", ndjson: lines, token: edgeToken).status == 200)
        try await edge.waitUntilDrained(hub: rig.hubURL)

        let tokens = ["EDGE_TOKEN": edgeToken, "HUB_TOKEN": hubRead, "ADMIN_TOKEN": hubAdmin, "NOVA_TOKEN": hubRead]
        let oneToken = try await NovaProcess.run(["verify", edge.base, rig.hubURL, "--scope", "kill"], directory: rig.dir, environment: tokens)
        #expect(oneToken.status != 0 && oneToken.status != 1, "\(oneToken.stdout)\(oneToken.stderr)")
        #expect(oneToken.stderr.contains("401"), "the hub's token is not the edge's: \(oneToken.stderr)")
        let perSide = try await NovaProcess.run(
            ["verify", edge.base, rig.hubURL, "--scope", "kill", "--left-token-env", "EDGE_TOKEN", "--right-token-env", "HUB_TOKEN"], directory: rig.dir,
            environment: tokens)
        #expect(perSide.status == 0, "\(perSide.stdout)\(perSide.stderr)")
        #expect(perSide.stdout.contains("300 vs 300 events"), "\(perSide.stdout)")

        // The edge is retired: the hub forgets it on an admin's word only.
        edge.process?.kill()
        _ = try await edge.process?.wait()
        let sites = try await NovaProcess.run(["sync", "status", "--sites", "--url", rig.hubURL, "--token-env", "HUB_TOKEN"], directory: rig.dir, environment: tokens)
        #expect(sites.status == 0 && sites.stdout.contains(#""siteId":"site-a""#), "\(sites.stdout)\(sites.stderr)")
        let refused = try await NovaProcess.run(["sync", "forget", "site-a", "--url", rig.hubURL, "--token-env", "HUB_TOKEN"], directory: rig.dir, environment: tokens)
        #expect(refused.status != 0 && refused.stderr.contains("403"), "\(refused.stdout)\(refused.stderr)")
        let forgot = try await NovaProcess.run(["sync", "forget", "site-a", "--url", rig.hubURL, "--token-env", "ADMIN_TOKEN"], directory: rig.dir, environment: tokens)
        #expect(forgot.status == 0 && forgot.stdout.contains(#""storesForgotten":1"#), "\(forgot.stdout)\(forgot.stderr)")
        let after = try await HTTP.get("\(rig.hubURL)/v1/sync/sites", token: hubRead)
        #expect(after.body.trimmingCharacters(in: .whitespacesAndNewlines) == #"{"sites":[]}"#, "\(after.body)")
        #expect(try await HTTP.get("\(rig.hubURL)/v1/stats", token: hubRead).body.contains("300"), "the site's events stay")
    }

    /// `Examples/sync-walkthrough.sh` works as its README section says, shortened: a hub and two
    /// edges fed by `nova simulate`, one edge's link cut (seen as unreachable) and restored, and
    /// a clean `nova verify` of each edge against the hub.
    @Test func theSyncWalkthroughRunsClean() async throws {
        let dir = try TemporaryDirectory("nova-walkthrough")
        defer { dir.remove() }
        let (out, err) = (dir.file("walkthrough.out"), dir.file("walkthrough.err"))
        let script = Fixtures.repositoryRoot.appendingPathComponent("Examples/sync-walkthrough.sh").path
        let status = try await runTool(
            "/usr/bin/env", ["NOVA_BIN=\(NovaProcess.binary)", "TMPDIR=\(dir.path)", "FEED_SECONDS=10", "CUT_SECONDS=4", "bash", script], stdout: out, stderr: err)
        let output = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        let errors = (try? String(contentsOfFile: err, encoding: .utf8)) ?? ""
        #expect(status == 0, "exit \(status):\n\(output.suffix(3_000))\n\(errors.suffix(2_000))")
        #expect(output.contains(#""upstreamReachable":false"#), "the cut was not seen at site-b: \(output.suffix(3_000))")
        #expect(output.components(separatedBy: "result: equal").count == 3, "both edges verify equal: \(output.suffix(3_000))")
    }

    /// An edge cut off from its hub fills its disk budget: ingest is refused with 507 and its
    /// retention deletes nothing unacknowledged. Once the hub is back, the outbox drains,
    /// retention frees the space, and ingest is accepted again.
    @Test func retentionKeepsWhatTheHubLacksAndTheBudgetRefusesIngestInstead() async throws {
        let rig = try await SyncRig()
        defer { rig.cleanup() }
        let edge = try rig.edge("edge-a", site: "site-a", batchSize: 2_000, sqlite: #", "retentionAfter": "1 seconds", "maxBytes": 400000"#)
        try await edge.start()
        var accepted = 0
        var refusal = ""
        for k in 0..<200 {
            let answer = try await HTTP.post("\(edge.base)/v1/events", ndjson: RecorderProcessTests.batch(500, offset: k * 500).lines)
            if answer.status == 507 {
                refusal = answer.body
                break
            }
            #expect(answer.status == 200, "\(answer.body)")
            accepted += 500
        }
        #expect(refusal.contains("database.sqlite.maxBytes"), "\(refusal)")
        #expect(accepted >= 1_000)
        try await Task.sleep(for: .seconds(2.5))  // retention sweeps meanwhile
        #expect(try await HTTP.allEventIds(edge.base, scope: "kill").count == accepted, "nothing unacknowledged is deleted")
        #expect(try await HTTP.get("\(edge.base)/metrics").body.contains("nova_ingest_refused_full_total 500"))

        try await rig.startHub()
        try await edge.waitUntilDrained(hub: rig.hubURL)
        #expect(try await HTTP.allEventIds(rig.hubURL, scope: "kill").count == accepted)
        let deadline = ContinuousClock.now + .seconds(30)
        while try await HTTP.allEventIds(edge.base, scope: "kill").count > 0, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(250))
        }
        #expect(try await HTTP.allEventIds(edge.base, scope: "kill").isEmpty, "acknowledged events past retention are deleted")
        let again = try await HTTP.post("\(edge.base)/v1/events", ndjson: RecorderProcessTests.batch(500, offset: 500_000).lines)
        #expect(again.status == 200, "ingest recovers once space is free: \(again.body)")
    }
}

/// A hub on a fresh PostgreSQL database at a fixed port (it keeps its address across restarts),
/// and edges shipping to it.
final class SyncRig: @unchecked Sendable {
    let dir: TemporaryDirectory
    let location: PostgresLocation
    let hubPort: Int
    let hubConfig: String
    var hub: NovaProcess?
    var edges = [Edge]()

    var hubURL: String { "http://127.0.0.1:\(hubPort)" }

    /// `hubServer`: more keys of the hub's `server`, e.g. `, "maxBodyBytes": 1000000`.
    init(hubExtra: String = "", hubServer: String = "") async throws {
        dir = try TemporaryDirectory("nova-sync")
        location = try await TestPostgres.createDatabase()
        hubPort = try freePort()
        hubConfig = dir.file("hub.json")
        try Data(#"""
            {"core": {"siteId": "hub"}, "database": {"type": "timescaledb", "timescaledb": {"host": "\#(location.host)", "port": \#(location.port),
              "database": "\#(location.database)", "user": "\#(location.user)", "pool": {"connectionTimeout": 2},
              "hypertable": {"retentionAfter": "1000 years"}}},
             "server": {"port": \#(hubPort)\#(hubServer)}\#(hubExtra)}
            """#.utf8).write(to: URL(fileURLWithPath: hubConfig))
    }

    func startHub() async throws {
        let process = try NovaProcess(["serve", "--config", hubConfig], directory: dir, name: "hub", environment: ["NOVA_DB_PASSWORD": location.password ?? ""])
        hub = process
        _ = try await process.waitUntilListening()
        let deadline = ContinuousClock.now + .seconds(60)
        while (try? await HTTP.get("\(hubURL)/readyz").status) != 200 {
            guard ContinuousClock.now < deadline else { throw ProcessError("the hub never became ready: \(process.stderr)") }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// `server`: more keys of the edge's `server`; `readToken`: what the rig reads the edge with.
    func edge(
        _ name: String, site: String, batchSize: Int, sqlite: String = "", server: String = "", readToken: String? = nil, environment: [String: String] = [:]
    ) throws -> Edge {
        let edge = try Edge(
            name: name, site: site, batchSize: batchSize, hubURL: hubURL, dir: dir, sqlite: sqlite, server: server, readToken: readToken, environment: environment)
        edges.append(edge)
        return edge
    }

    func cleanup() {
        hub?.kill()
        for edge in edges { edge.process?.kill() }
        let name = location.database
        let dir = dir
        Task {
            await TestPostgres.dropDatabase(name)
            dir.remove()
        }
    }

    final class Edge: @unchecked Sendable {
        let name: String
        let dbPath: String
        let configPath: String
        let port: Int
        let dir: TemporaryDirectory
        let environment: [String: String]
        let readToken: String?
        var process: NovaProcess?

        var base: String { "http://127.0.0.1:\(port)" }

        /// `sqlite`: more keys of `database.sqlite`, e.g. `, "maxBytes": 400000`.
        init(
            name: String, site: String, batchSize: Int, hubURL: String, dir: TemporaryDirectory, sqlite: String, server: String, readToken: String?,
            environment: [String: String]
        ) throws {
            self.name = name
            self.dir = dir
            self.environment = environment
            self.readToken = readToken
            dbPath = dir.file("\(name).db")
            configPath = dir.file("\(name).json")
            port = try freePort()
            try Data(#"""
                {"core": {"siteId": "\#(site)"}, "database": {"sqlite": {"path": "\#(dbPath)"\#(sqlite)}}, "server": {"port": \#(port)\#(server)},
                 "sync": {"enabled": true, "upstream": "\#(hubURL)", "batchSize": \#(batchSize), "maxBackoffSeconds": 1}}
                """#.utf8).write(to: URL(fileURLWithPath: configPath))
        }

        func start() async throws {
            let p = try NovaProcess(["record", "--config", configPath], directory: dir, name: name, environment: environment)
            process = p
            _ = try await p.waitUntilListening()
        }

        /// Posts events and waits until the hub has them all.
        func recordAndShip(_ lines: String, hub: String) async throws {
            let answer = try await HTTP.post("\(base)/v1/events", ndjson: lines)
            guard answer.status == 200 else { throw ProcessError("\(name): ingest answered \(answer.status): \(answer.body)") }
            try await waitUntilDrained(hub: hub)
        }

        /// Stops the edge, puts a new store file in place (`copy`, or none: an empty one is
        /// created) as on a replaced or restored box, and starts it again.
        func replaceStore(with copy: String?) async throws {
            process?.kill(SIGTERM)
            _ = try await process?.wait()
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: dbPath + suffix) }
            if let copy { try FileManager.default.copyItem(atPath: copy, toPath: dbPath) }
            try await start()
        }

        /// Waits until the edge has nothing pending and the hub's watermark is its head.
        func waitUntilDrained(hub: String, timeout: Duration = .seconds(90)) async throws {
            let deadline = ContinuousClock.now + timeout
            var last = ""
            while ContinuousClock.now < deadline {
                if let status = try? await HTTP.get("\(base)/v1/sync/status", token: readToken), status.status == 200 {
                    last = status.body
                    let value = try JSONParser.parse(status.body)
                    if value["pendingEvents"] == .number(JSONNumber(0)), value["upstreamReachable"] == .bool(true) { return }
                }
                try await Task.sleep(for: .milliseconds(200))
            }
            throw ProcessError("\(name) did not drain within \(timeout): \(last)\n\(process?.stderr.suffix(2000) ?? "")")
        }
    }
}

/// Posts batches of 100 events to an edge until stopped, retrying a failed batch (the edge may be
/// down: killed and restarting), and keeps the ids of every acknowledged one.
actor Loader {
    let edge: SyncRig.Edge
    private(set) var acked = Set<String>()
    private(set) var failures = 0
    private var stopped = false
    private var offset = 0

    init(edge: SyncRig.Edge) {
        self.edge = edge
    }

    func run() async {
        while !stopped {
            let (lines, ids) = RecorderProcessTests.batch(100, offset: offset)
            if let answer = try? await HTTP.post("\(edge.base)/v1/events", ndjson: lines, timeout: .seconds(10)), answer.status == 200 {
                acked.formUnion(ids)
                offset += 100
                try? await Task.sleep(for: .milliseconds(10))
            } else {
                failures += 1
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    func stop() { stopped = true }
}
