import Foundation
import NovaCore
import NovaTestSupport
import Testing

/// The edge's disk really fills up: `nova record` on a 4 MiB tmpfs.
@Suite struct DiskFullProcessTests {
    /// Ingest is refused with 507 and a message saying so; everything acknowledged before is still
    /// there exactly once and readable; once space returns, ingest is accepted again without a
    /// restart; and the file passes `PRAGMA integrity_check` afterwards.
    @Test func aFullDiskRefusesIngestHarmsNothingAndRecovers() async throws {
        let fs = try await SmallFilesystem.mount(megabytes: 4)
        defer { Task { await fs.unmount() } }
        let dir = try TemporaryDirectory("nova-diskfull")
        defer { dir.remove() }
        // Room to give back later.
        let filler = fs.file("filler")
        try Data(repeating: 0, count: 1 << 20).write(to: URL(fileURLWithPath: filler))
        let dbPath = fs.file("nova.db")
        let config = dir.file("config.json")
        try Data(#"{"database": {"sqlite": {"path": "\#(dbPath)"}}, "server": {"port": 0}}"#.utf8).write(to: URL(fileURLWithPath: config))
        let recorder = try NovaProcess(["record", "--config", config], directory: dir)
        defer { recorder.kill() }
        let base = try await recorder.waitUntilListening()

        var acked = [String]()
        var refusal: (status: UInt, body: String)?
        for k in 0..<2_000 {
            let (lines, ids) = RecorderProcessTests.batch(200, offset: k * 200)
            let answer = try await HTTP.post("\(base)/v1/events", ndjson: lines)
            if answer.status == 200 {
                acked += ids
            } else {
                refusal = answer
                break
            }
        }
        let refused = try #require(refusal, "the disk never filled")
        #expect(refused.status == 507, "\(refused.body)")
        #expect(refused.body.contains("the disk is full") && refused.body.contains("nothing was stored"), "\(refused.body)")
        #expect(acked.count > 1_000)

        // Still full: refused again, reads and health unharmed.
        #expect(try await HTTP.post("\(base)/v1/events", ndjson: RecorderProcessTests.batch(200, offset: 900_000).lines).status == 507)
        let stored = try await HTTP.allEventIds(base, scope: "kill")
        #expect(stored.count == acked.count, "every acknowledged event once, nothing of a refused batch")
        #expect(Set(stored) == Set(acked))
        #expect(try await HTTP.get("\(base)/healthz").status == 200)
        let metrics = try await HTTP.get("\(base)/metrics").body
        #expect(metrics.contains("nova_ingest_refused_full_total 400"), "\(metrics.split(separator: "\n").filter { $0.contains("refused_full") })")

        // Space returns: ingest works again, without a restart.
        try FileManager.default.removeItem(atPath: filler)
        let (lines, ids) = RecorderProcessTests.batch(200, offset: 900_000)
        let again = try await HTTP.post("\(base)/v1/events", ndjson: lines)
        #expect(again.status == 200, "\(again.body)")
        let after = try await HTTP.allEventIds(base, scope: "kill")
        #expect(Set(after) == Set(acked + ids) && after.count == acked.count + ids.count)

        recorder.kill(SIGTERM)
        #expect(try await recorder.wait() == 0)
        let check = try await NovaProcess.run(["schema", "check", "sqlite:\(dbPath)", "--integrity"], directory: dir)
        #expect(check.status == 0 && check.stdout.contains("integrity: ok"), "\(check.stdout)\(check.stderr)")
    }
}
