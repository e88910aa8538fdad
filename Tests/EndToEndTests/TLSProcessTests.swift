import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
import NovaCore
import NovaTestSupport
import Testing

/// TLS end to end with real processes: a recorder and a hub serving HTTPS and WSS from a configured
/// certificate, an edge shipping to the hub over HTTPS trusting a configured authority, and
/// everyone who does not hold the right authority (or speaks plain HTTP) refused.
@Suite struct TLSProcessTests {
    @Test func recorderHubAndSyncSpeakTLSAndRefuseStrangers() async throws {
        let dir = try TemporaryDirectory("nova-tls")
        defer { dir.remove() }
        // Only the hub needs its port before it starts (the edges' upstream); the others take any
        // free one and say which (a port probed free can be taken by then).
        let hubPort = try freePort()
        let tls = #""tls": {"certificate": "\#(TestTLS.certificate)", "key": "\#(TestTLS.key)"}"#
        func write(_ name: String, _ json: String) throws -> String {
            let path = dir.file(name)
            try Data(json.utf8).write(to: URL(fileURLWithPath: path))
            return path
        }
        let hubConfig = try write("hub.json", #"""
            {"core": {"siteId": "hub"}, "database": {"sqlite": {"path": "\#(dir.file("hub.db"))"}}, "server": {"port": \#(hubPort), \#(tls)}}
            """#)
        // The edge names the hub by address and trusts the test authority; the stranger names it
        // by host name and trusts another authority.
        let edgeConfig = try write("edge.json", #"""
            {"core": {"siteId": "site-a"}, "database": {"sqlite": {"path": "\#(dir.file("edge.db"))"}}, "server": {"port": 0, \#(tls)},
             "sync": {"enabled": true, "upstream": "https://127.0.0.1:\#(hubPort)", "caFile": "\#(TestTLS.ca)", "maxBackoffSeconds": 1}}
            """#)
        let strangerConfig = try write("stranger.json", #"""
            {"core": {"siteId": "site-b"}, "database": {"sqlite": {"path": "\#(dir.file("stranger.db"))"}}, "server": {"port": 0},
             "sync": {"enabled": true, "upstream": "https://localhost:\#(hubPort)", "caFile": "\#(TestTLS.otherCA)", "maxBackoffSeconds": 1}}
            """#)
        let hub = try NovaProcess(["serve", "--config", hubConfig], directory: dir, name: "hub")
        defer { hub.kill() }
        #expect(try await hub.waitUntilListening() == "https://127.0.0.1:\(hubPort)")
        let edge = try NovaProcess(["record", "--config", edgeConfig], directory: dir, name: "edge")
        defer { edge.kill() }
        let edgeURL = try await edge.waitUntilListening()
        let edgePort = try #require(Int(edgeURL.split(separator: ":").last ?? ""))
        let stranger = try NovaProcess(["record", "--config", strangerConfig], directory: dir, name: "stranger")
        defer { stranger.kill() }
        let strangerPort = try #require(Int(try await stranger.waitUntilListening().split(separator: ":").last ?? ""))

        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: try TestTLS.client()))
        let distrustful = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: try TestTLS.client(trusting: TestTLS.otherCA)))
        defer {
            _ = Task {
                try? await client.shutdown()
                try? await distrustful.shutdown()
            }
        }
        let hubURL = "https://127.0.0.1:\(hubPort)"

        // HTTPS ingest and query on the edge.
        let (lines, ids) = RecorderProcessTests.batch(300, offset: 0)
        var post = HTTPClientRequest(url: "\(edgeURL)/v1/events")
        post.method = .POST
        post.headers.add(name: "Content-Type", value: "application/x-ndjson")
        post.body = .bytes(ByteBuffer(string: lines))
        let posted = try await client.execute(post, timeout: .seconds(30))
        let postedBody = String(buffer: try await posted.body.collect(upTo: 1 << 20))
        #expect(posted.status == .ok, "\(postedBody)")
        func get(_ url: String) async throws -> String {
            let response = try await client.execute(HTTPClientRequest(url: url), timeout: .seconds(30))
            let body = String(buffer: try await response.body.collect(upTo: 1 << 26))
            guard response.status == .ok else { throw ProcessError("GET \(url): \(response.status) \(body)") }
            return body
        }
        let answer = try await get("\(edgeURL)/v1/events?scope=kill&from=1970-01-01T00:00:00Z&to=9999-12-31T00:00:00Z")
        #expect(answer.split(separator: "\n").count == ids.count)

        // WSS: a rewind over TLS gets every event, then caughtUp.
        try await withStream(port: edgePort, query: "scope=kill&mode=rewind&from=1970-01-01T00:00:00Z&speed=0", tls: try TestTLS.client()) { stream in
            try await stream.wait(forType: "caughtUp", timeout: .seconds(30))
            #expect(Set(stream.eventIds) == Set(ids))
        }

        // Plain HTTP to a TLS port, and a client trusting another authority: refused.
        await #expect(throws: (any Error).self) { _ = try await HTTP.get("http://127.0.0.1:\(edgePort)/healthz") }
        await #expect(throws: (any Error).self) { _ = try await distrustful.execute(HTTPClientRequest(url: "\(edgeURL)/healthz"), timeout: .seconds(10)) }

        // The edge ships over HTTPS; verify compares the two servers over HTTPS.
        let deadline = ContinuousClock.now + .seconds(60)
        var status = JSONValue.null
        repeat {
            status = try JSONParser.parse(try await get("\(edgeURL)/v1/sync/status"))
            if status["pendingEvents"] == .number(JSONNumber(0)), status["upstreamReachable"] == .bool(true) { break }
            try await Task.sleep(for: .milliseconds(200))
        } while ContinuousClock.now < deadline
        #expect(status["pendingEvents"] == .number(JSONNumber(0)), "\(status)")
        let verify = try await NovaProcess.run(["verify", edgeURL, hubURL, "--scope", "kill", "--ca-file", TestTLS.ca], directory: dir)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        #expect(verify.stdout.contains("result: equal"), "\(verify.stdout)")
        // The other HTTP tools take the authority too.
        let simulate = try await NovaProcess.run(["simulate", "--target", edgeURL, "--ca-file", TestTLS.ca, "--devices", "2", "--rate", "10", "--duration", "1", "--scope", "sim"], directory: dir)
        #expect(simulate.status == 0, "\(simulate.stdout)\(simulate.stderr)")
        let query = try await NovaProcess.run(["query", edgeURL, "--ca-file", TestTLS.ca, "--scope", "kill", "--from", "1970-01-01T00:00:00Z", "--to", "9999-12-31T00:00:00Z"], directory: dir)
        #expect(query.status == 0 && query.stdout.split(separator: "\n").count == ids.count, "\(query.stderr)")
        let syncStatus = try await NovaProcess.run(["sync", "status", "--url", edgeURL, "--ca-file", TestTLS.ca], directory: dir)
        #expect(syncStatus.status == 0 && syncStatus.stdout.contains("pendingEvents"), "\(syncStatus.stdout)\(syncStatus.stderr)")
        let untrusted = try await NovaProcess.run(["verify", edgeURL, hubURL, "--scope", "kill"], directory: dir)
        #expect(untrusted.status == 2, "without the authority verify cannot connect: \(untrusted.stdout)\(untrusted.stderr)")

        // The stranger records locally but cannot ship: the hub's certificate is not one its
        // authority signed. It says so, and keeps everything pending.
        let strangerPost = try await HTTP.post("http://127.0.0.1:\(strangerPort)/v1/events", ndjson: RecorderProcessTests.batch(50, offset: 1_000).lines)
        #expect(strangerPost.status == 200)
        // Its shipper tries at once and backs off; wait (bounded) for the reason to show.
        var strangerStatus = JSONValue.null
        let strangerDeadline = ContinuousClock.now + .seconds(60)
        repeat {
            strangerStatus = try JSONParser.parse(try await HTTP.get("http://127.0.0.1:\(strangerPort)/v1/sync/status").body)
            if strangerStatus["pendingEvents"] == .number(JSONNumber(50)), strangerStatus["lastError"] != .null { break }
            try await Task.sleep(for: .milliseconds(200))
        } while ContinuousClock.now < strangerDeadline
        #expect(strangerStatus["upstreamReachable"] == .bool(false), "\(strangerStatus)")
        #expect(strangerStatus["pendingEvents"] == .number(JSONNumber(50)), "\(strangerStatus)")
        #expect("\(strangerStatus["lastError"] ?? .null)".contains("CERTIFICATE_VERIFY_FAILED"), "\(strangerStatus)")
        let sites = try await get("\(hubURL)/v1/sync/sites")
        #expect(sites.contains("site-a") && !sites.contains("site-b"), "\(sites)")
    }

    @Test func unusableTLSFilesStopTheStartNamingTheSetting() async throws {
        let dir = try TemporaryDirectory("nova-tls-bad")
        defer { dir.remove() }
        let notPEM = dir.file("not.pem")
        try Data("not a certificate\n".utf8).write(to: URL(fileURLWithPath: notPEM))
        let sqlite = #""database": {"sqlite": {"path": "\#(dir.file("bad.db"))"}}"#
        let cases: [(String, String)] = [
            (#"\#(sqlite), "server": {"tls": {"certificate": "\#(TestTLS.certificate)", "key": "\#(dir.file("missing.key"))"}}"#, "server.tls.key"),
            (#"\#(sqlite), "server": {"tls": {"certificate": "\#(notPEM)", "key": "\#(TestTLS.key)"}}"#, "server.tls.certificate"),
            (#"\#(sqlite), "server": {"tls": {"certificate": "\#(TestTLS.certificate)"}}"#, "server.tls.key: required"),
            (#"\#(sqlite), "sync": {"enabled": true, "upstream": "https://127.0.0.1:9", "caFile": "\#(notPEM)"}"#, "sync.caFile"),
            (#""database": {"type": "timescaledb", "timescaledb": {"tls": "verify-ca"}}"#, "database.timescaledb.tls"),
            (#""database": {"type": "timescaledb", "timescaledb": {"caFile": "\#(TestTLS.ca)"}}"#, "database.timescaledb.caFile"),
            (#""database": {"type": "timescaledb", "timescaledb": {"tls": "verify-full", "caFile": "\#(notPEM)"}}"#, "database.timescaledb.caFile"),
        ]
        for (k, (json, named)) in cases.enumerated() {
            let path = dir.file("bad\(k).json")
            try Data("{\(json)}".utf8).write(to: URL(fileURLWithPath: path))
            let command = json.contains("timescaledb") ? "serve" : "record"
            let run = try await NovaProcess.run([command, "--config", path, "--port", "0"], directory: dir)
            #expect(run.status != 0, "\(json)")
            #expect(run.stderr.contains(named), "\(json): \(run.stderr)")
        }
    }
}
