import Foundation
import NovaCore
import NovaSQLite
import NovaTestSupport
import Synchronization
import Testing

/// `nova record` as a real process: killed for real, restarted on the same file.
@Suite(.serialized) struct RecorderProcessTests {
    func writeConfig(_ dir: TemporaryDirectory, extra: String = "") throws -> String {
        let path = dir.file("config.json")
        try Data(#"{"database": {"sqlite": {"path": "\#(dir.file("nova.db"))"}}, "server": {"port": 0}\#(extra)}"#.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func batch(_ n: Int, offset: Int) -> (lines: String, ids: [String]) {
        var lines = ""
        var ids = [String]()
        for k in 0..<n {
            let seq = offset + k
            let event = Event(
                scopeId: "kill", sourceTruthTime: Timestamp(microseconds: 1_780_000_000_000_000 + Int64(seq) * 100),
                canonicalTruthTime: Timestamp(microseconds: 1_780_000_000_000_000 + Int64(seq) * 100),
                fields: .raw(connectionId: "dev-\(seq % 7)", sequence: Int64(seq), bytes: Array(repeating: UInt8(seq & 255), count: 24)))
            lines += event.json + "\n"
            ids.append(event.eventId.hex)
        }
        return (lines, ids)
    }

    /// Kill -9 during a stream of ingest requests, three times: every acknowledged event is
    /// present after restart, exactly once.
    @Test func killNineDuringIngestLosesNothingAcknowledged() async throws {
        let dir = try TemporaryDirectory("nova-e2e")
        defer { dir.remove() }
        let config = try writeConfig(dir)
        let acked = AckedIds()
        var offset = 0
        for round in 0..<3 {
            let recorder = try NovaProcess(["record", "--config", config], directory: dir)
            let base = try await recorder.waitUntilListening()
            let start = offset
            offset += 1_000_000
            // Four concurrent writers; the kill lands while requests are in flight.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<4 {
                    group.addTask {
                        var k = 0
                        while true {
                            let (lines, ids) = Self.batch(250, offset: start + writer * 200_000 + k * 250)
                            // Resend an already acknowledged batch now and then: a duplicate.
                            guard let response = try? await HTTP.post("\(base)/v1/events", ndjson: lines) else { return }
                            if response.status == 200 { await acked.add(ids) } else { return }
                            k += 1
                        }
                    }
                }
                try await Task.sleep(for: .milliseconds(700 + round * 300))
                recorder.kill(SIGKILL)
                try await group.waitForAll()
            }
            #expect(try await recorder.wait() != 0)
        }
        let recorder = try NovaProcess(["record", "--config", config], directory: dir)
        let base = try await recorder.waitUntilListening()
        let stored = try await HTTP.allEventIds(base, scope: "kill")
        let ackedIds = await acked.ids
        #expect(ackedIds.count > 1000, "the test acknowledged too little to mean anything")
        #expect(Set(stored).count == stored.count, "an event is stored twice")
        let missing = ackedIds.subtracting(stored)
        #expect(missing.isEmpty, "\(missing.count) acknowledged events lost")
        recorder.kill(SIGTERM)
        #expect(try await recorder.wait() == 0)
    }

    /// SIGTERM while requests are in flight: the server drains, every acknowledged event stays,
    /// and the process exits 0.
    @Test func sigtermShutsDownGracefully() async throws {
        let dir = try TemporaryDirectory("nova-e2e")
        defer { dir.remove() }
        let config = try writeConfig(dir)
        let recorder = try NovaProcess(["record", "--config", config], directory: dir)
        let base = try await recorder.waitUntilListening()
        let acked = AckedIds()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<3 {
                group.addTask {
                    var k = 0
                    while true {
                        let (lines, ids) = Self.batch(500, offset: writer * 1_000_000 + k * 500)
                        guard let response = try? await HTTP.post("\(base)/v1/events", ndjson: lines), response.status == 200 else { return }
                        await acked.add(ids)
                        k += 1
                    }
                }
            }
            try await Task.sleep(for: .milliseconds(500))
            recorder.kill(SIGTERM)
            try await group.waitForAll()
        }
        #expect(try await recorder.wait() == 0, "\(recorder.stderr)")
        let again = try NovaProcess(["record", "--config", config], directory: dir)
        let stored = Set(try await HTTP.allEventIds(try await again.waitUntilListening(), scope: "kill"))
        #expect(await acked.ids.isSubset(of: stored))
        again.kill(SIGTERM)
        try await again.wait()
    }

    @Test func corruptOrForeignFileIsRefusedAndLeftUntouched() async throws {
        let dir = try TemporaryDirectory("nova-e2e")
        defer { dir.remove() }
        let config = try writeConfig(dir)
        let junk = Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        try junk.write(to: URL(fileURLWithPath: dir.file("nova.db")))
        let (status, _, stderr) = try await NovaProcess.run(["record", "--config", config], directory: dir)
        #expect(status != 0)
        #expect(stderr.contains(dir.file("nova.db")), "\(stderr)")
        #expect(stderr.contains("not a SQLite database"), "\(stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir.file("nova.db"))) == junk)
    }

    @Test func configurationErrorsAndPrintConfig() async throws {
        let dir = try TemporaryDirectory("nova-e2e")
        defer { dir.remove() }
        let bad = dir.file("bad.json")
        try Data(#"{"server": {"prot": 8080}}"#.utf8).write(to: URL(fileURLWithPath: bad))
        let refused = try await NovaProcess.run(["record", "--config", bad], directory: dir)
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("server.prot: unknown key"), "\(refused.stderr)")
        let printed = try await NovaProcess.run(["record", "--config", try writeConfig(dir), "--port", "9999", "--print-config"], directory: dir)
        #expect(printed.status == 0)
        #expect(printed.stdout.contains(#""port": 9999"#), "\(printed.stdout)")
        let open = try await NovaProcess.run(["record", "--config", try writeConfig(dir), "--host", "0.0.0.0"], directory: dir)
        #expect(open.status != 0)
        #expect(open.stderr.contains("not loopback"), "\(open.stderr)")
        let busy = try TemporaryDirectory("nova-e2e")
        defer { busy.remove() }
        let first = try NovaProcess(["record", "--config", try writeConfig(busy)], directory: busy)
        defer { first.kill() }
        let taken = try #require(Int(try await first.waitUntilListening().split(separator: ":").last ?? ""))
        let second = try await NovaProcess.run(["record", "--config", try writeConfig(dir), "--port", "\(taken)"], directory: dir)
        #expect(second.status != 0 && second.stderr.contains("server.port: 127.0.0.1:\(taken) is in use by another process"), "\(second.stderr)")
        let flag = try await NovaProcess.run(["record", "--port", "70000"], directory: dir)
        #expect(flag.status != 0)
        #expect(flag.stderr.contains("--port"), "\(flag.stderr)")
    }

    /// `nova query` from the store file and from the server, NDJSON and CSV; `nova schema`.
    @Test func queryAndSchemaCommands() async throws {
        let dir = try TemporaryDirectory("nova-e2e")
        defer { dir.remove() }
        let config = try writeConfig(dir)
        let recorder = try NovaProcess(["record", "--config", config], directory: dir)
        let base = try await recorder.waitUntilListening()
        let (lines, ids) = Self.batch(120, offset: 0)
        #expect(try await HTTP.post("\(base)/v1/events", ndjson: lines).status == 200)
        #expect(try await HTTP.get("\(base)/v1/events?scope=kill").status == 400)
        let metrics = try await HTTP.get("\(base)/metrics")
        #expect(metrics.body.contains("http_server_request_duration_bucket"), "request latency histogram")
        // Error answers are timed too, under their status (Hummingbird times only responses).
        let timed = metrics.body.split(separator: "\n").filter { $0.hasPrefix("http_server_request_duration_count") }
        #expect(timed.contains { $0.contains(#""400""#) && $0.contains("/v1/events") }, "\(timed)")
        #expect(metrics.body.contains(#"nova_ingest_events_total{result="accepted"} 120"#))
        let range = ["--scope", "kill", "--from", "2026-01-01T00:00:00Z", "--to", "2027-01-01T00:00:00Z", "--page-size", "7"]
        let viaURL = try await NovaProcess.run(["query", base] + range, directory: dir)
        #expect(viaURL.status == 0, "\(viaURL.stderr)")
        let urlIds = viaURL.stdout.split(separator: "\n").compactMap { (try? JSONParser.parse(String($0)))?["eventId"] }
        #expect(urlIds == ids.map { .string($0) })
        recorder.kill(SIGTERM)
        try await recorder.wait()
        // Nothing listening any more: an error at once, not after the client's connect retries.
        let started = ContinuousClock.now
        let refused = try await NovaProcess.run(["query", base] + range, directory: dir)
        #expect(refused.status != 0 && refused.stderr.contains("no answer (is the server running?)"), "\(refused.stderr)")
        #expect(ContinuousClock.now - started < .seconds(20), "nova query took \(ContinuousClock.now - started) to give up")
        let viaStore = try await NovaProcess.run(["query", "sqlite:\(dir.file("nova.db"))"] + range, directory: dir)
        #expect(viaStore.status == 0, "\(viaStore.stderr)")
        #expect(viaStore.stdout == viaURL.stdout)
        let csv = try await NovaProcess.run(["query", "sqlite:\(dir.file("nova.db"))", "--format", "csv"] + range, directory: dir)
        let rows = csv.stdout.split(separator: "\r\n")
        #expect(rows.first?.hasPrefix("lane,scopeId,sourceTruthTime,canonicalTruthTime,eventId,connectionId,sequence,bytes") == true)
        #expect(rows.count == 121)
        let check = try await NovaProcess.run(["schema", "check", "sqlite:\(dir.file("nova.db"))"], directory: dir)
        #expect(check.status == 0 && check.stdout.contains("schema: v3"), "\(check.stdout)\(check.stderr)")
        // Refused before connecting (nothing listens on port 1; a connection attempt would say so).
        let pgIntegrity = try await NovaProcess.run(["schema", "check", "postgres://nova@127.0.0.1:1/nova", "--integrity"], directory: dir)
        #expect(pgIntegrity.status != 0 && pgIntegrity.stderr.contains("--integrity: for sqlite: stores"), "\(pgIntegrity.stderr)")
        let missing = try await NovaProcess.run(["schema", "check", "sqlite:\(dir.file("none.db"))"], directory: dir)
        #expect(missing.status != 0 && missing.stderr.contains("no such file"))
        let create = try await NovaProcess.run(["schema", "create", "sqlite:\(dir.file("new.db"))"], directory: dir)
        #expect(create.status == 0 && create.stdout.contains("storeId:"))
    }

    /// `nova backup` while the recorder takes writes: the copy is one moment of the store (every
    /// event up to the ingestSeq it names, in order, none after), and it refuses what would lose
    /// a file.
    @Test func backupWhileRecording() async throws {
        let dir = try TemporaryDirectory("nova-e2e")
        defer { dir.remove() }
        let config = try writeConfig(dir)
        let recorder = try NovaProcess(["record", "--config", config], directory: dir)
        defer { recorder.kill(SIGKILL) }
        let base = try await recorder.waitUntilListening()
        let store = "sqlite:\(dir.file("nova.db"))"
        let copy = dir.file("backup.db")
        // Stopped by a flag, not by cancellation, which could abandon a request that commits.
        let stop = StopFlag()
        let written = TestCounter()
        let writing = Task {
            var k = 0
            while !stop.isSet {
                let (lines, _) = Self.batch(500, offset: k * 500)
                guard try await HTTP.post("\(base)/v1/events", ndjson: lines).status == 200 else { throw ProcessError("ingest failed") }
                k += 1
                written.set(k)
            }
            return k
        }
        // Taken once something is stored, and while the writes go on (a fixed wait was seen to
        // end before the first commit on a loaded machine).
        let deadline = ContinuousClock.now + .seconds(60)
        while written.value < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        let backup = try await NovaProcess.run(["backup", store, copy], directory: dir)
        let after = written.value
        while written.value < after + 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        stop.set()
        let batches = try await writing.value
        #expect(backup.status == 0, "\(backup.stderr)")
        let words = backup.stdout.split(separator: " ")
        let seq = words.firstIndex(of: "ingestSeq").flatMap { Int64(words[$0 + 1].trimmingCharacters(in: .punctuationCharacters)) }
        guard let seq else { throw ProcessError("no ingestSeq in: \(backup.stdout)") }
        #expect(seq > 0 && seq < Int64(batches * 500), "taken while the writes went on: \(seq) of \(batches * 500)")
        #expect(!FileManager.default.fileExists(atPath: copy + ".partial"))

        let original = try SQLiteStore.open(path: dir.file("nova.db"), options: .init(createIfMissing: false, readOnly: true))
        let copied = try SQLiteStore.open(path: copy, options: .init(createIfMissing: false, readOnly: true))
        #expect(try await copied.lastCommittedSeq() == seq)
        #expect(try await copied.integrityProblems().isEmpty)
        #expect(copied.storeId == original.storeId)
        let inCopy = try await copied.committed(after: 0, limit: Int(seq) + 1_000)
        let inOriginal = try await original.committed(after: 0, limit: Int(seq))
        #expect(inCopy.count == Int(seq))
        #expect(inCopy.map(\.seq) == Array(1...seq))
        #expect(inCopy.map(\.event.eventId) == inOriginal.map(\.event.eventId))
        await copied.close()
        await original.close()

        // Refusals leave the existing file as it was.
        let before = try Data(contentsOf: URL(fileURLWithPath: copy))
        let again = try await NovaProcess.run(["backup", store, copy], directory: dir)
        #expect(again.status != 0 && again.stderr.contains("exists; name another file, or replace it with --overwrite"), "\(again.stderr)")
        let itself = try await NovaProcess.run(["backup", store, dir.file("nova.db"), "--overwrite"], directory: dir)
        #expect(itself.status != 0 && itself.stderr.contains("is the store itself"), "\(itself.stderr)")
        let foreign = try await NovaProcess.run(["backup", "sqlite:\(config)", dir.file("other.db")], directory: dir)
        #expect(foreign.status != 0 && foreign.stderr.contains("not a SQLite database"), "\(foreign.stderr)")
        let hub = try await NovaProcess.run(["backup", "postgres://nova@127.0.0.1:1/nova", dir.file("other.db")], directory: dir)
        #expect(hub.status != 0 && hub.stderr.contains("pg_dump"), "\(hub.stderr)")
        let nowhere = try await NovaProcess.run(["backup", store, dir.file("missing/backup.db")], directory: dir)
        #expect(nowhere.status != 0 && nowhere.stderr.contains("does not exist"), "\(nowhere.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == before)
        #expect(!FileManager.default.fileExists(atPath: dir.file("other.db")))

        let replaced = try await NovaProcess.run(["backup", store, copy, "--overwrite"], directory: dir)
        #expect(replaced.status == 0, "\(replaced.stderr)")
        #expect(replaced.stdout.contains("ingestSeq \(batches * 500)"), "every write acknowledged before: \(replaced.stdout)")
    }
}

final class StopFlag: Sendable {
    private let flag = Mutex(false)
    var isSet: Bool { flag.withLock { $0 } }
    func set() { flag.withLock { $0 = true } }
}

actor AckedIds {
    var ids = Set<String>()
    func add(_ new: [String]) { ids.formUnion(new) }
}

/// `nova simulate` against a real recorder: all five lanes arrive, and the recorder's counts add up
/// to what the simulator reports.
@Suite struct SimulateTests {
    @Test func simulatorFeedsARecorder() async throws {
        let dir = try TemporaryDirectory("nova-sim")
        defer { dir.remove() }
        let config = dir.file("config.json")
        try Data(#"{"database": {"sqlite": {"path": "\#(dir.file("nova.db"))"}}, "server": {"port": 0}}"#.utf8).write(to: URL(fileURLWithPath: config))
        let recorder = try NovaProcess(["record", "--config", config], directory: dir)
        defer { recorder.kill(SIGTERM) }
        let base = try await recorder.waitUntilListening()
        let sim = try await NovaProcess.run(
            ["simulate", "--devices", "40", "--rate", "20", "--duration", "3", "--target", base, "--duplicates", "0.05", "--late", "0.05", "--scope", "sim"],
            directory: dir)
        #expect(sim.status == 0, "\(sim.stderr)")
        let numbers = sim.stdout.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        // "sent S events in R requests over T s (E events/s)" / "A accepted, D duplicates, X rejected"
        let text = sim.stdout
        #expect(text.contains("0 rejected"), "\(text)")
        let stats = try await HTTP.get("\(base)/v1/stats")
        let json = try JSONParser.parse(stats.body)
        let lanes = json["lanes"]!.arrayValue
        #expect(Set(lanes.compactMap { $0["lane"]?.stringValue }) == ["raw", "parsed", "ui", "command", "metadata"], "\(stats.body)")
        guard case .number(let total)? = json["totalEvents"] else { throw ProcessError("no totalEvents") }
        #expect(text.contains("\(total.int64 ?? -1) accepted"), "the recorder holds what it accepted: \(text) vs \(total)")
        #expect(numbers.first.map { $0 >= 2000 } == true, "about 40 × 20 × 3 events sent: \(text)")
    }
}

/// Each benchmark at a tiny size, so that it keeps working (figures are not checked: a debug
/// build under test measures nothing).
@Suite struct BenchSmokeTests {
    @Test func everyBenchmarkRunsAndChecksWhatItReadsBack() async throws {
        let dir = try TemporaryDirectory("nova-bench")
        defer { dir.remove() }
        // SQLite: all of them through `bench all` (migrate needs PostgreSQL and says so).
        let reports = dir.file("reports")
        let all = try await NovaProcess.run(
            ["bench", "all", "--events", "3000", "--seconds", "1", "--rate", "1000", "--clients", "3", "--json-dir", reports, "--allow-debug"], directory: dir)
        #expect(all.status == 0, "\(all.stdout) \(all.stderr)")
        #expect(all.stdout.contains("migrate: skipped: needs --store postgres"), "\(all.stdout)")
        #expect(all.stdout.contains("ratio"), "the summary gives each figure's ratio: \(all.stdout)")
        func report(_ name: String) throws -> JSONValue {
            try JSONParser.parse(Array(Data(contentsOf: URL(fileURLWithPath: "\(reports)/\(name).json"))))
        }
        for name in ["ingest", "query", "stream", "sync"] {
            #expect(try report(name)["errors"]?.arrayValue.isEmpty == true, "\(name): \(all.stdout)")
        }
        #expect(try report("ingest")["benchmark"]?.stringValue == "ingest")
        #expect(try report("ingest")["groups"]?.arrayValue.first?["figure"]?["events"] == .number(JSONNumber(3000)))
        // Per window size: as fast as they can, then at 25% and 50% of that; a fraction of a
        // capacity under one query per second is skipped (a debug build on a loaded machine
        // was seen to measure that little in one second), so the rows expected follow from it.
        let queryGroups = try report("query")["groups"]?.arrayValue ?? []
        let names = queryGroups.map { $0["name"]?.stringValue ?? "" }
        let capacities = queryGroups.indices.filter { names[$0].contains("as fast as they can") }
        #expect(capacities.count == 2, "one per window size: \(names)")
        for (k, i) in capacities.enumerated() {
            guard case .number(let qps)? = queryGroups[i]["figure"]?["queriesPerSecond"] else {
                Issue.record("no queriesPerSecond in the row \(names[i])")
                continue
            }
            let paced = names[(i + 1)..<(k + 1 < capacities.count ? capacities[k + 1] : names.count)]
            let expected = [25, 50].filter { qps.double * Double($0) / 100 >= 1 }
            #expect(paced.count == expected.count, "\(names)")
            for (name, percent) in zip(paced, expected) {
                #expect(name.contains("queries/s offered (\(percent)% of capacity)"), "\(name)")
            }
        }
        #expect(try report("stream")["groups"]?.arrayValue.count == 2, "LIVE and REWIND")
        #expect(try report("sync")["groups"]?.arrayValue.count == 2, "CATCH-UP and LAG")
        #expect(try report("sync")["groups"]?.arrayValue.first?["figure"]?["events"] == .number(JSONNumber(3000)))

        // PostgreSQL: each benchmark on its own, with the options `all` does not pass on.
        let json = dir.file("run.json")
        func lastReport() throws -> JSONValue { try JSONParser.parse(Array(Data(contentsOf: URL(fileURLWithPath: json)))) }
        let (locator, password) = try TestPostgres.server()
        let hub = try await NovaProcess.run(
            ["bench", "ingest", "--store", locator, "--events", "2000", "--batch", "500", "--seed-sample", "100", "--seed-connections", "4", "--allow-debug"],
            directory: dir, environment: ["NOVA_DB_PASSWORD": password])
        #expect(hub.status == 0, "\(hub.stderr)")
        #expect(hub.stdout.contains("seed design") && hub.stdout.contains("COPY"), "\(hub.stdout)")
        let query = try await NovaProcess.run(
            ["bench", "query", "--store", locator, "--events", "3000", "--seconds", "1", "--clients", "3", "--allow-debug", "--json", json],
            directory: dir, environment: ["NOVA_DB_PASSWORD": password])
        #expect(query.status == 0, "\(query.stderr)")
        let queried = try lastReport()
        #expect(queried["groups"]?.arrayValue.count == 6, "per window size: as fast as they can, then at 25% and 50% of that")
        #expect(queried["errors"]?.arrayValue.isEmpty == true, "\(query.stdout)")
        let stream = try await NovaProcess.run(
            ["bench", "stream", "--store", locator, "--events", "3000", "--rate", "2000", "--seconds", "1", "--clients", "3", "--batch", "250",
             "--allow-debug", "--json", json],
            directory: dir, environment: ["NOVA_DB_PASSWORD": password])
        #expect(stream.status == 0, "\(stream.stdout) \(stream.stderr)")
        let streamed = try lastReport()
        #expect(streamed["groups"]?.arrayValue.count == 2, "LIVE and REWIND")
        #expect(streamed["errors"]?.arrayValue.isEmpty == true, "\(stream.stdout)")
        let sync = try await NovaProcess.run(
            ["bench", "sync", "--store", locator, "--events", "3000", "--batch-size", "1000", "--rate", "1000", "--seconds", "1", "--allow-debug", "--json", json],
            directory: dir, environment: ["NOVA_DB_PASSWORD": password])
        #expect(sync.status == 0, "\(sync.stdout) \(sync.stderr)")
        let synced = try lastReport()
        #expect(synced["groups"]?.arrayValue.count == 2, "CATCH-UP and LAG")
        #expect(synced["groups"]?.arrayValue.first?["figure"]?["events"] == .number(JSONNumber(3000)))
        #expect(synced["errors"]?.arrayValue.isEmpty == true, "\(sync.stdout)")
        let migrate = try await NovaProcess.run(
            ["bench", "migrate", "--store", locator, "--events", "3000", "--batch-size", "1000", "--allow-debug", "--json", json],
            directory: dir, environment: ["NOVA_DB_PASSWORD": password])
        #expect(migrate.status == 0, "\(migrate.stdout) \(migrate.stderr)")
        let migrated = try lastReport()
        #expect(migrated["groups"]?.arrayValue.first?["baselines"]?.arrayValue.count == 1, "beside psql COPY")
        #expect(migrated["errors"]?.arrayValue.isEmpty == true, "\(migrate.stdout)")
        let refused = try await NovaProcess.run(["bench", "ingest", "--events", "10"], directory: dir)
        #expect(refused.status != 0 && refused.stderr.contains("release"), "a debug build refuses without --allow-debug")
    }
}
