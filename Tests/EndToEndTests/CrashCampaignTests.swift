import Foundation
import NovaCore
import NovaTestSupport
import Testing

/// The crash campaign: `nova record` killed with SIGKILL at random moments while it ingests,
/// streams to a LIVE client and ships to a hub, then started again on the same file.
///
/// The suite runs a few rounds; `Scripts/crash-campaign [ROUNDS]` runs as many as asked
/// (`NOVA_CRASH_ROUNDS`), and `NOVA_CRASH_SEED` replays a campaign's kill moments.
@Suite(.timeLimit(.minutes(4))) struct CrashCampaignTests {
    @Test func killNineAtRandomMomentsLosesNothingAcknowledgedAndKeepsTheFileSound() async throws {
        let environment = ProcessInfo.processInfo.environment
        let rounds = environment["NOVA_CRASH_ROUNDS"].flatMap(Int.init) ?? 4
        let seed = environment["NOVA_CRASH_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64(UInt32.max))
        var rng = SeededGenerator(seed: seed)
        // Printed first, so that a run that fails in any way (a time limit included) can be replayed.
        print("crash campaign: seed \(seed), \(rounds) rounds")
        let dir = try TemporaryDirectory("nova-crash")
        defer { dir.remove() }
        let (hubPort, edgePort) = (try freePort(), try freePort())
        let hubConfig = dir.file("hub.json")
        try Data(#"{"core": {"siteId": "hub"}, "database": {"sqlite": {"path": "\#(dir.file("hub.db"))"}}, "server": {"port": \#(hubPort)}}"#.utf8)
            .write(to: URL(fileURLWithPath: hubConfig))
        let edgeDB = dir.file("edge.db")
        let edgeConfig = dir.file("edge.json")
        try Data(#"""
            {"core": {"siteId": "site-a"}, "database": {"sqlite": {"path": "\#(edgeDB)"}}, "server": {"port": \#(edgePort)},
             "sync": {"enabled": true, "upstream": "http://127.0.0.1:\#(hubPort)", "batchSize": 300, "maxBackoffSeconds": 1}}
            """#.utf8).write(to: URL(fileURLWithPath: edgeConfig))
        let hub = try NovaProcess(["serve", "--config", hubConfig], directory: dir, name: "hub")
        defer { hub.kill() }
        _ = try await hub.waitUntilListening()
        let base = "http://127.0.0.1:\(edgePort)"
        let hubURL = "http://127.0.0.1:\(hubPort)"

        let acked = AckedIds()
        var offset = 0
        var streamed = 0
        for round in 1...rounds {
            let edge = try NovaProcess(["record", "--config", edgeConfig], directory: dir, name: "edge")
            _ = try await edge.waitUntilListening()
            let killAfter = Duration.milliseconds(Int.random(in: 300...2_500, using: &rng))
            let start = offset
            offset += 1_000_000
            let received = TestCounter()
            let repeated = TestCounter()
            let stop = TestCounter()
            try await withThrowingTaskGroup(of: Void.self) { group in
                // Ingest: batches of 100 until the recorder dies; only acknowledged ones count.
                group.addTask {
                    var k = start
                    while true {
                        let (lines, ids) = RecorderProcessTests.batch(100, offset: k)
                        guard let answer = try? await HTTP.post("\(base)/v1/events", ndjson: lines, timeout: .seconds(10)), answer.status == 200 else { return }
                        await acked.add(ids)
                        k += 100
                    }
                }
                // A LIVE client reading everything as it commits. It ends when the connection
                // does, or when told to, never by cancellation: a cancelled WebSocket client
                // skips its close timeout (swift-websocket sleeps for it in a task that inherits
                // the cancellation) and then waits for inbound data it no longer reads, which
                // froze a whole test run here with the socket to the killed recorder in
                // CLOSE_WAIT and no task left to run.
                group.addTask {
                    _ = try? await withStream(port: edgePort, query: "scope=kill&mode=live", connectTimeout: .seconds(5)) { stream in
                        func count() {
                            let ids = stream.eventIds
                            received.set(ids.count)
                            repeated.set(ids.count - Set(ids).count)
                        }
                        while stop.value == 0, !stream.closedByServer {
                            try await Task.sleep(for: .milliseconds(50))
                            count()
                        }
                        count()
                    }
                }
                try await Task.sleep(for: killAfter)
                edge.kill()
                _ = try await edge.wait()
                stop.set(1)
                try await group.waitForAll()
            }
            streamed += received.value
            print("crash campaign: round \(round) killed after \(killAfter), \(await acked.ids.count) events acknowledged so far, \(received.value) streamed live")
            #expect(repeated.value == 0, "round \(round): the LIVE client got \(repeated.value) events twice")
            // The killed file, before anything opens it for writing again.
            let check = try await NovaProcess.run(["schema", "check", "sqlite:\(edgeDB)", "--integrity"], directory: dir)
            #expect(check.status == 0 && check.stdout.contains("integrity: ok"), "round \(round) (seed \(seed)): \(check.stdout)\(check.stderr)")
        }

        // Afterwards: every acknowledged event exactly once at the edge, and at the hub once shipped.
        let edge = try NovaProcess(["record", "--config", edgeConfig], directory: dir, name: "edge")
        defer { edge.kill() }
        _ = try await edge.waitUntilListening()
        let ackedIds = await acked.ids
        let stored = try await HTTP.allEventIds(base, scope: "kill")
        #expect(stored.count == Set(stored).count, "no event twice (seed \(seed))")
        #expect(ackedIds.isSubset(of: Set(stored)), "\(ackedIds.subtracting(stored).count) acknowledged events lost (seed \(seed))")
        let deadline = ContinuousClock.now + .seconds(120)
        var status = JSONValue.null
        repeat {
            status = try JSONParser.parse(try await HTTP.get("\(base)/v1/sync/status").body)
            if status["pendingEvents"] == .number(JSONNumber(0)) { break }
            try await Task.sleep(for: .milliseconds(200))
        } while ContinuousClock.now < deadline
        let atHub = try await HTTP.allEventIds(hubURL, scope: "kill")
        #expect(atHub.count == Set(atHub).count && Set(atHub) == Set(stored), "the hub holds what the edge holds, once (seed \(seed)): \(status)")
        let verify = try await NovaProcess.run(["verify", "sqlite:\(edgeDB)", hubURL], directory: dir)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        print("crash campaign: \(rounds) kills (seed \(seed)), \(ackedIds.count) events acknowledged, \(stored.count) stored, \(atHub.count) at the hub, \(streamed) streamed live; integrity ok after every kill")
    }
}
