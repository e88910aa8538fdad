import Foundation
import NovaCore
import NovaTestSupport
import Testing

@Suite struct ConfigurationTests {
    func load(_ text: String) throws(ConfigurationError) -> NovaConfiguration {
        try NovaConfiguration.load(json: Array(text.utf8))
    }

    @Test func repositoryDefaultIsTheEmbeddedDefault() throws {
        let config = try NovaConfiguration.load(json: Array(Data(contentsOf: Fixtures.repositoryRoot.appendingPathComponent("config.json"))))
        #expect(config.database.type == .sqlite)
        #expect(config.database.sqlite.path == "data/nova.db")
        #expect(config.server.host == "127.0.0.1" && config.server.port == 8080)
        #expect(config.server.tokens.isEmpty && !config.sync.enabled)
    }

    @Test func emptyObjectGivesDefaults() throws {
        #expect(try load("{}") == NovaConfiguration())
    }

    @Test(arguments: [
        (#"{"bogus": 1}"#, "bogus: unknown key"),
        (#"{"database": {"sqlite": {"pth": "x"}}}"#, "database.sqlite.pth: unknown key"),
        (#"{"database": {"sqlite": {"durability": "fast"}}}"#, "database.sqlite.durability: must be one of"),
        (#"{"server": {"port": 70000}}"#, "server.port: must be between 0 and 65535"),
        (#"{"server": {"port": "80"}}"#, "server.port: must be an integer"),
        (#"{"sync": {"maxBackoffSeconds": 1e12}}"#, "sync.maxBackoffSeconds: must be between 1 and 3600, found 1000000000000.0"),
        (#"{"sync": {"maxBackoffSeconds": 3e1}}"#, "sync.maxBackoffSeconds: must be written as a plain integer, found 30.0"),
        (#"{"sync": {"maxBackoffSeconds": 2.5}}"#, "sync.maxBackoffSeconds: must be an integer, found a fraction (2.5)"),
        (#"{"server": {"tokens": [{"sha256": "abc", "roles": ["read"]}]}}"#, "server.tokens[0].sha256: must be 64 lowercase hex"),
        (#"{"server": {"tokens": [{"sha256": "\#(String(repeating: "a", count: 64))", "roles": ["root"]}]}}"#, "server.tokens[0].roles: unknown role"),
        (#"{"server": {"tokens": [{"sha256": "\#(String(repeating: "a", count: 64))", "roles": ["sync"]}]}}"#, "server.tokens[0].siteId: required"),
        (#"{"database": {"timescaledb": {"pool": {"minSize": 30, "maxSize": 20}}}}"#, "database.timescaledb.pool.minSize: must not exceed"),
        (#"{"database": {"timescaledb": {"pool": {"readMaxSize": 0}}}}"#, "database.timescaledb.pool.readMaxSize: must be between 1 and 1000"),
        (#"{"database": {"timescaledb": {"hypertable": {"chunkInterval": "daily"}}}}"#, "database.timescaledb.hypertable.chunkInterval: must be"),
        (#"{"limits": {"maxStringBytes": 1000}}"#, "limits.maxStringBytes: must be between 1 and 256"),
        (#"{"core": []}"#, "core: must be an object"),
        (#"{"core": {"siteId": "\#(String(repeating: "s", count: 257))"}}"#, "core.siteId: must be 1 to 256 bytes of UTF-8 without NUL"),
        (#"{"core": {"siteId": "a\u0000b"}}"#, "core.siteId: must be 1 to 256 bytes of UTF-8 without NUL"),
        (#"{"server": {"tokens": [{"sha256": "\#(String(repeating: "a", count: 64))", "roles": ["read"]}, {"sha256": "\#(String(repeating: "a", count: 64))", "roles": ["admin"]}]}}"#,
         "server.tokens[1].sha256: the same token as server.tokens[0]"),
        (#"{"sync": {"upstream": "not a url"}}"#, "sync.upstream: must be an http:// or https:// URL of the hub"),
        (#"{"sync": {"upstream": "ftp://hub:8081"}}"#, "sync.upstream: must be an http:// or https:// URL of the hub"),
        (#"{"sync": {"upstream": "http://"}}"#, "sync.upstream: must be an http:// or https:// URL of the hub"),
        ("{", "invalid JSON"),
    ])
    func errorsNameTheKey(text: String, expected: String) {
        do {
            _ = try load(text)
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.description.hasPrefix(expected), "\(error)")
        }
    }

    @Test func printedConfigurationLoadsBackAndMasksTokens() throws {
        var text = #"{"server": {"port": 9, "tokens": [{"sha256": "\#(String(repeating: "a", count: 64))", "roles": ["read", "sync"], "siteId": "s1"}]}, "#
        text += #""database": {"type": "dual", "dual": {"primary": "timescaledb"}}}"#
        let config = try load(text)
        let printed = config.printable
        #expect(!printed.contains(String(repeating: "a", count: 64)))
        #expect(printed.contains("***"))
        let reloaded = try load(printed.replacingOccurrences(of: "***", with: String(repeating: "a", count: 64)))
        #expect(reloaded == config)
        // And with every TLS setting.
        let tls = try load(#"""
            {"server": {"tls": {"certificate": "c.pem", "key": "k.pem"}}, "sync": {"caFile": "hub-ca.pem"},
             "database": {"timescaledb": {"tls": "verify-full", "caFile": "db-ca.pem"}}}
            """#)
        #expect(tls.server.tls == NovaConfiguration.ServerTLS(certificate: "c.pem", key: "k.pem"))
        #expect(tls.database.timescaledb.tls == .verifyFull)
        #expect(try load(tls.printable) == tls)
    }
}
