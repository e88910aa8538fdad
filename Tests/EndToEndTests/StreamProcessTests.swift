import Foundation
import HummingbirdWSClient
import NIOWebSocket
import NovaCore
import NovaTestSupport
import Synchronization
import Testing

/// Streams across real `nova serve` processes: two hubs on one PostgreSQL database deliver each
/// other's commits LIVE (PostgreSQL `LISTEN/NOTIFY` wakes them, the store is the source of
/// truth), and SIGTERM closes open streams instead of hanging on them.
@Suite(.timeLimit(.minutes(3))) struct StreamProcessTests {
    @Test func twoHubsOnOneDatabaseStreamEachOthersCommits() async throws {
        let dir = try TemporaryDirectory("nova-hubs")
        defer { dir.remove() }
        let location = try await TestPostgres.createDatabase()
        defer { Task { await TestPostgres.dropDatabase(location.database) } }
        let config = dir.file("hub.json")
        try Data(#"""
            {"database": {"type": "timescaledb", "timescaledb": {"host": "\#(location.host)", "port": \#(location.port), "database": "\#(location.database)", "user": "\#(location.user)",
              "hypertable": {"retentionAfter": "1000 years"}}},
             "server": {"port": 0}}
            """#.utf8).write(to: URL(fileURLWithPath: config))
        let environment = ["NOVA_DB_PASSWORD": location.password ?? ""]
        let a = try NovaProcess(["serve", "--config", config], directory: dir, name: "hub-a", environment: environment)
        defer { a.kill() }
        let b = try NovaProcess(["serve", "--config", config], directory: dir, name: "hub-b", environment: environment)
        defer { b.kill() }
        let baseA = try await a.waitUntilListening()
        let baseB = try await b.waitUntilListening()
        for base in [baseA, baseB] {
            let deadline = ContinuousClock.now + .seconds(60)
            while (try? await HTTP.get("\(base)/readyz").status) != 200 {
                guard ContinuousClock.now < deadline else { throw ProcessError("\(base) never became ready") }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let portA = Int(baseA.split(separator: ":").last!)!
        let portB = Int(baseB.split(separator: ":").last!)!

        // One LIVE client on each hub; batches go alternately through A and B, one after the
        // other, so commit order is posting order.
        var expected = [String]()
        var bodies = [(String, String)]()
        for k in 0..<6 {
            let (lines, ids) = RecorderProcessTests.batch(50, offset: k * 50)
            bodies.append((k % 2 == 0 ? baseA : baseB, lines))
            expected += ids
        }
        let want = expected
        let ready = TestCounter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for port in [portA, portB] {
                group.addTask {
                    try await withStream(port: port, query: "scope=kill&mode=live") { stream in
                        try await stream.wait(forType: "caughtUp")
                        ready.add()
                        try await stream.wait(forEvents: want.count, timeout: .seconds(30))
                        try await Task.sleep(for: .milliseconds(300))
                        #expect(stream.eventIds == want, "port \(port)")
                    }
                }
            }
            while ready.value < 2 { try await Task.sleep(for: .milliseconds(10)) }
            for (base, lines) in bodies {
                let response = try await HTTP.post("\(base)/v1/events", ndjson: lines)
                #expect(response.status == 200, "\(response.body)")
            }
            try await group.waitForAll()
        }

        // SIGTERM with a stream open: the stream is closed as going away and the process exits.
        let closed = TestCounter()
        try await withThrowingTaskGroup(of: WebSocketCloseFrame?.self) { group in
            group.addTask {
                try await withStream(port: portA, query: "scope=kill&mode=live") { stream in
                    try await stream.wait(forType: "caughtUp")
                    closed.add()
                    while !stream.closedByServer { try await Task.sleep(for: .milliseconds(20)) }
                }
            }
            while closed.value < 1 { try await Task.sleep(for: .milliseconds(10)) }
            a.kill(SIGTERM)
            let status = try await a.wait(timeout: .seconds(20))
            #expect(status == 0, "\(a.stderr)")
            let frame = try await group.next()
            #expect(frame??.closeCode == .goingAway || frame??.closeCode == .normalClosure)
        }
    }
}
