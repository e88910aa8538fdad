import Foundation

/// The effective configuration of a `nova` process: the keys of api.md, each with a default.
///
/// Loaded from JSON by ``NovaConfiguration/load(json:)``: an unknown key, a wrong type or a value
/// outside its rule is an error naming the key path. Secrets never live here, only the names of the
/// environment variables that hold them.
public struct NovaConfiguration: Sendable, Equatable {
    public struct Core: Sendable, Equatable {
        /// This recorder's identity as a sync site.
        public var siteId = "site-local"

        public init() {}
    }

    public enum DatabaseType: String, Sendable, Equatable, CaseIterable {
        case sqlite, timescaledb, dual
    }

    public enum Durability: String, Sendable, Equatable, CaseIterable {
        /// `synchronous=NORMAL` in WAL: survives a process crash, may lose the last commits on power loss.
        case normal
        /// `synchronous=FULL`: survives power loss.
        case full
    }

    public struct SQLite: Sendable, Equatable {
        /// Relative paths are relative to the working directory.
        public var path = "data/nova.db"
        public var durability = Durability.normal
        /// Delete events whose canonical time is older than this (e.g. "30 days"), never one the
        /// hub has not acknowledged when sync is on; nil keeps everything.
        public var retentionAfter: String?
        /// The disk budget in bytes (database and its WAL); at it, ingest is refused with 507
        /// rather than anything dropped. 0: no budget.
        public var maxBytes: Int64 = 0

        public init() {}
    }

    public struct Pool: Sendable, Equatable {
        public var minSize = 2
        public var maxSize = 20
        /// The ordered reads' own pool. More reads at once than the server has cores to run them
        /// only adds contention, and a pool sized to its clients parks a connection after nearly
        /// every read, which in postgres-nio starts keep-alive and idle timer tasks each time; a
        /// small pool stays leased under load and queues the rest in order. The default follows
        /// PostgreSQL's rule of thumb (twice the cores), taken from this machine, where a small
        /// hub's server usually runs.
        public var readMaxSize = Pool.defaultReadMaxSize
        public static let defaultReadMaxSize = max(2, 2 * ProcessInfo.processInfo.activeProcessorCount)
        /// Seconds.
        public var commandTimeout = 60
        /// Seconds.
        public var connectionTimeout = 10

        public init() {}
    }

    public struct Hypertable: Sendable, Equatable {
        public var chunkInterval = "1 day"
        public var compressionAfter = "7 days"
        public var retentionAfter = "90 days"

        public init() {}
    }

    public struct Postgres: Sendable, Equatable {
        public var host = "localhost"
        public var port = 5432
        public var database = "nova"
        public var user = "nova"
        /// The environment variable that holds the password.
        public var passwordEnv = "NOVA_DB_PASSWORD"
        public var pool = Pool()
        public var hypertable = Hypertable()
        /// TLS to the server, with libpq's meanings: `disable`, `require` (encrypted, the server's
        /// certificate not checked), `verify-full` (checked against `caFile`, or the system's
        /// roots, and the host name).
        public var tls = PostgresTLS.disable
        /// PEM file of the certificate authorities `verify-full` trusts; nil: the system's.
        public var caFile: String?

        public init() {}
    }

    public enum PostgresTLS: String, Sendable, Equatable, CaseIterable {
        case disable, require
        case verifyFull = "verify-full"
    }

    /// The server's certificate chain and private key, PEM files; with them it speaks only HTTPS
    /// and WSS.
    public struct ServerTLS: Sendable, Equatable {
        public var certificate: String
        public var key: String

        public init(certificate: String, key: String) {
            self.certificate = certificate
            self.key = key
        }
    }

    public struct Dual: Sendable, Equatable {
        /// The store that answers reads: `sqlite` or `timescaledb`.
        public var primary = DatabaseType.sqlite
        /// How often the buckets completed since the last comparison are compared.
        public var verifyEvery = "60 seconds"
        /// How far back (event time) a full comparison looks.
        public var verifyWindow = "10 minutes"
        /// How often the full comparison (of `verifyWindow`) runs.
        public var sweepEvery = "10 minutes"

        public init() {}
    }

    public struct Database: Sendable, Equatable {
        public var type = DatabaseType.sqlite
        public var sqlite = SQLite()
        public var timescaledb = Postgres()
        public var dual = Dual()

        public init() {}
    }

    public enum Role: String, Sendable, Equatable, CaseIterable {
        case ingest, read, admin, sync
    }

    public struct Token: Sendable, Equatable {
        /// Lowercase hex SHA-256 of the bearer token.
        public var sha256: String
        public var roles: [Role]
        /// For `sync` tokens: the one site this token may ship for.
        public var siteId: String?

        public init(sha256: String, roles: [Role], siteId: String? = nil) {
            self.sha256 = sha256
            self.roles = roles
            self.siteId = siteId
        }
    }

    public struct Server: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 8080
        /// Larger request bodies are refused with 413 before anything is stored.
        public var maxBodyBytes = 64 << 20
        /// The largest `limit` a query may ask for.
        public var maxQueryLimit = 100_000
        /// The most event content (pre-image bytes) in one page of `GET /v1/events` and in one
        /// page a stream reads: a page ends there with a cursor, so large events cannot make a
        /// page of `limit` events take gigabytes.
        public var maxPageBytes = 16 << 20
        /// Events in one ingest body at most; more: 413, nothing stored.
        public var maxEventsPerBatch = 100_000
        /// The longest `from`..`to` of `GET /v1/events` (an interval such as "31 days"); nil: any.
        /// Each answer is bounded by `limit` anyway; this bounds how far a sparse filter scans.
        public var maxQueryRange: String?
        /// Open `/v1/stream` connections per token (with auth off, for everyone together).
        public var maxStreamsPerToken = 64
        /// The largest message a stream client may send (commands are tiny).
        public var maxStreamMessageBytes = 4096
        /// An HTTP connection that sends nothing for this long (mid-request or between requests)
        /// is closed; WebSocket streams have their own pings.
        public var idleTimeoutSeconds = 60
        public var tokens: [Token] = []
        public var tls: ServerTLS?

        public init() {}
    }

    public struct Sync: Sendable, Equatable {
        public var enabled = false
        public var upstream = "http://127.0.0.1:8081"
        /// The environment variable that holds this site's sync token.
        public var tokenEnv = "NOVA_SYNC_TOKEN"
        public var batchSize = 20_000
        /// The most bytes of events one batch carries (before compression), so that large
        /// events still fit the hub's `server.maxBodyBytes` (64 MiB by default).
        public var maxBatchBytes = 8 << 20
        /// Whether the shipper gzips batches (`gzip`) or sends them as they are (`none`).
        public var compression = "gzip"
        /// The longest the shipper waits between attempts while the hub fails or refuses.
        public var maxBackoffSeconds = 30
        /// Hub side: batches applied at once; more are refused with 503 and `Retry-After`.
        public var maxConcurrentBatches = 8
        /// PEM file of the certificate authorities an `https://` upstream is checked against;
        /// nil: the system's.
        public var caFile: String?

        public init() {}
    }

    public var core = Core()
    public var database = Database()
    public var server = Server()
    public var sync = Sync()
    public var limits = EventLimits()

    public init() {}
}

extension NovaConfiguration {
    /// A duration such as "30 days", "12 hours", "15 minutes" or "90 seconds" (singular too).
    public static func parseInterval(_ text: String) -> Duration? {
        let parts = text.split(separator: " ")
        guard parts.count == 2, let n = Int64(parts[0]), n > 0 else { return nil }
        let unit = parts[1].hasSuffix("s") ? parts[1].dropLast() : parts[1]
        let seconds: Int64
        switch unit {
        case "second": seconds = 1
        case "minute": seconds = 60
        case "hour": seconds = 3_600
        case "day": seconds = 86_400
        default: return nil
        }
        guard n <= Int64.max / seconds / 1_000_000 else { return nil }
        return .seconds(n * seconds)
    }
}

/// A configuration key that is unknown, of the wrong type, or breaks its rule.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Dotted key path, e.g. `database.sqlite.durability`.
    public var key: String
    public var rule: String
    public var description: String { key.isEmpty ? rule : "\(key): \(rule)" }

    public init(key: String, rule: String) {
        self.key = key
        self.rule = rule
    }
}

extension NovaConfiguration {
    /// Parses a configuration file's text; keys left out keep their defaults.
    public static func load(json text: [UInt8]) throws(ConfigurationError) -> NovaConfiguration {
        let root: JSONValue
        do {
            root = try JSONParser.parse(text)
        } catch {
            throw ConfigurationError(key: "", rule: error.description)
        }
        /// A site's id by the rules of a scopeId (event-model.md), which the hub applies to it.
        func checkSiteId(_ id: String, key: String) throws(ConfigurationError) {
            guard id.utf8.count <= 256, !id.utf8.contains(0) else {
                throw ConfigurationError(key: key, rule: "must be 1 to 256 bytes of UTF-8 without NUL")
            }
        }
        var config = NovaConfiguration()
        let r = try ConfigObject(root, path: "")
        if let core = try r.object("core") {
            config.core.siteId = try core.string("siteId", default: config.core.siteId, nonEmpty: true)
            try checkSiteId(config.core.siteId, key: "core.siteId")
            try core.finish()
        }
        if let db = try r.object("database") {
            config.database.type = try db.choice("type", default: config.database.type)
            if let s = try db.object("sqlite") {
                config.database.sqlite.path = try s.string("path", default: config.database.sqlite.path, nonEmpty: true)
                config.database.sqlite.durability = try s.choice("durability", default: config.database.sqlite.durability)
                if let text = try s.optionalString("retentionAfter") {
                    guard Self.parseInterval(text) != nil else {
                        throw ConfigurationError(key: "database.sqlite.retentionAfter", rule: "must be a duration such as \"30 days\", \"12 hours\" or \"90 seconds\", found \(quoted(text))")
                    }
                    config.database.sqlite.retentionAfter = text
                }
                config.database.sqlite.maxBytes = Int64(try s.int("maxBytes", default: Int(config.database.sqlite.maxBytes), in: 0...(1 << 50)))
                try s.finish()
            }
            if let p = try db.object("timescaledb") {
                var pg = config.database.timescaledb
                pg.host = try p.string("host", default: pg.host, nonEmpty: true)
                pg.port = try p.int("port", default: pg.port, in: 1...65535)
                pg.database = try p.string("database", default: pg.database, nonEmpty: true)
                pg.user = try p.string("user", default: pg.user, nonEmpty: true)
                pg.passwordEnv = try p.string("password_env", default: pg.passwordEnv, nonEmpty: true)
                if let pool = try p.object("pool") {
                    pg.pool.minSize = try pool.int("minSize", default: pg.pool.minSize, in: 0...1000)
                    pg.pool.maxSize = try pool.int("maxSize", default: pg.pool.maxSize, in: 1...1000)
                    pg.pool.readMaxSize = try pool.int("readMaxSize", default: pg.pool.readMaxSize, in: 1...1000)
                    pg.pool.commandTimeout = try pool.int("commandTimeout", default: pg.pool.commandTimeout, in: 1...86_400)
                    pg.pool.connectionTimeout = try pool.int("connectionTimeout", default: pg.pool.connectionTimeout, in: 1...3600)
                    guard pg.pool.minSize <= pg.pool.maxSize else {
                        throw ConfigurationError(key: "database.timescaledb.pool.minSize", rule: "must not exceed maxSize (\(pg.pool.maxSize))")
                    }
                    try pool.finish()
                }
                if let h = try p.object("hypertable") {
                    pg.hypertable.chunkInterval = try h.interval("chunkInterval", default: pg.hypertable.chunkInterval)
                    pg.hypertable.compressionAfter = try h.interval("compressionAfter", default: pg.hypertable.compressionAfter)
                    pg.hypertable.retentionAfter = try h.interval("retentionAfter", default: pg.hypertable.retentionAfter)
                    try h.finish()
                }
                pg.tls = try p.choice("tls", default: pg.tls)
                pg.caFile = try p.optionalString("caFile")
                if pg.caFile != nil, pg.tls != .verifyFull {
                    throw ConfigurationError(key: "database.timescaledb.caFile", rule: "is used only with \"tls\": \"verify-full\"")
                }
                try p.finish()
                config.database.timescaledb = pg
            }
            if let d = try db.object("dual") {
                config.database.dual.primary = try d.choice("primary", default: config.database.dual.primary)
                guard config.database.dual.primary != .dual else {
                    throw ConfigurationError(key: "database.dual.primary", rule: "must be \"sqlite\" or \"timescaledb\"")
                }
                for (name, path) in [("verifyEvery", \Dual.verifyEvery), ("verifyWindow", \Dual.verifyWindow), ("sweepEvery", \Dual.sweepEvery)] {
                    let text = try d.string(name, default: config.database.dual[keyPath: path], nonEmpty: true)
                    guard Self.parseInterval(text) != nil else {
                        throw ConfigurationError(key: "database.dual.\(name)", rule: "must be a duration such as \"60 seconds\", \"15 minutes\" or \"1 day\", found \(quoted(text))")
                    }
                    config.database.dual[keyPath: path] = text
                }
                try d.finish()
            }
            try db.finish()
        }
        if let s = try r.object("server") {
            config.server.host = try s.string("host", default: config.server.host, nonEmpty: true)
            config.server.port = try s.int("port", default: config.server.port, in: 0...65535)
            config.server.maxBodyBytes = try s.int("maxBodyBytes", default: config.server.maxBodyBytes, in: 1...(1 << 34))
            config.server.maxQueryLimit = try s.int("maxQueryLimit", default: config.server.maxQueryLimit, in: 1...10_000_000)
            config.server.maxPageBytes = try s.int("maxPageBytes", default: config.server.maxPageBytes, in: 1...(1 << 32))
            config.server.maxEventsPerBatch = try s.int("maxEventsPerBatch", default: config.server.maxEventsPerBatch, in: 1...10_000_000)
            if let text = try s.optionalString("maxQueryRange") {
                guard Self.parseInterval(text) != nil else {
                    throw ConfigurationError(key: "server.maxQueryRange", rule: "must be a duration such as \"31 days\" or \"12 hours\", found \(quoted(text))")
                }
                config.server.maxQueryRange = text
            }
            config.server.maxStreamsPerToken = try s.int("maxStreamsPerToken", default: config.server.maxStreamsPerToken, in: 1...100_000)
            config.server.maxStreamMessageBytes = try s.int("maxStreamMessageBytes", default: config.server.maxStreamMessageBytes, in: 256...(1 << 20))
            config.server.idleTimeoutSeconds = try s.int("idleTimeoutSeconds", default: config.server.idleTimeoutSeconds, in: 1...86_400)
            if let tokens = try s.array("tokens") {
                config.server.tokens = try tokens.enumerated().map { (k, value) throws(ConfigurationError) in
                    let t = try ConfigObject(value, path: "server.tokens[\(k)]")
                    let hash = try t.string("sha256", default: nil, nonEmpty: true)
                    guard hash.utf8.count == 64, hash.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else {
                        throw ConfigurationError(key: "server.tokens[\(k)].sha256", rule: "must be 64 lowercase hex digits (the SHA-256 of the token)")
                    }
                    let roles = try t.stringArray("roles").map { (name: String) throws(ConfigurationError) -> Role in
                        guard let role = Role(rawValue: name) else {
                            throw ConfigurationError(key: "server.tokens[\(k)].roles", rule: "unknown role \(quoted(name)) (expected ingest, read, admin or sync)")
                        }
                        return role
                    }
                    guard !roles.isEmpty else { throw ConfigurationError(key: "server.tokens[\(k)].roles", rule: "must name at least one role") }
                    let siteId = try t.optionalString("siteId")
                    if let siteId { try checkSiteId(siteId, key: "server.tokens[\(k)].siteId") }
                    if roles.contains(.sync), siteId == nil {
                        throw ConfigurationError(key: "server.tokens[\(k)].siteId", rule: "required for a token with the sync role")
                    }
                    try t.finish()
                    return Token(sha256: hash, roles: roles, siteId: siteId)
                }
                // One token, one entry: with two, which roles it has would depend on the order.
                var seen = [String: Int]()
                for (k, token) in config.server.tokens.enumerated() {
                    if let first = seen[token.sha256] {
                        throw ConfigurationError(key: "server.tokens[\(k)].sha256", rule: "the same token as server.tokens[\(first)]; list each token once, with all its roles")
                    }
                    seen[token.sha256] = k
                }
            }
            if let t = try s.optionalObject("tls") {
                config.server.tls = ServerTLS(certificate: try t.string("certificate", default: nil, nonEmpty: true), key: try t.string("key", default: nil, nonEmpty: true))
                try t.finish()
            }
            try s.finish()
        }
        if let s = try r.object("sync") {
            config.sync.enabled = try s.bool("enabled", default: config.sync.enabled)
            config.sync.upstream = try s.string("upstream", default: config.sync.upstream, nonEmpty: true)
            let upstream = config.sync.upstream.lowercased()
            let afterScheme = upstream.hasPrefix("https://") ? upstream.dropFirst(8) : upstream.hasPrefix("http://") ? upstream.dropFirst(7) : nil
            guard let afterScheme, !afterScheme.isEmpty, !afterScheme.hasPrefix("/") else {
                throw ConfigurationError(key: "sync.upstream", rule: "must be an http:// or https:// URL of the hub, found \(quoted(config.sync.upstream))")
            }
            config.sync.tokenEnv = try s.string("token_env", default: config.sync.tokenEnv, nonEmpty: true)
            config.sync.batchSize = try s.int("batchSize", default: config.sync.batchSize, in: 1...100_000)
            config.sync.maxBatchBytes = try s.int("maxBatchBytes", default: config.sync.maxBatchBytes, in: (64 << 10)...(1 << 34))
            config.sync.compression = try s.string("compression", default: config.sync.compression, nonEmpty: true)
            guard ["gzip", "none"].contains(config.sync.compression) else {
                throw ConfigurationError(key: "sync.compression", rule: "must be \"gzip\" or \"none\"")
            }
            config.sync.maxBackoffSeconds = try s.int("maxBackoffSeconds", default: config.sync.maxBackoffSeconds, in: 1...3600)
            config.sync.maxConcurrentBatches = try s.int("maxConcurrentBatches", default: config.sync.maxConcurrentBatches, in: 1...256)
            config.sync.caFile = try s.optionalString("caFile")
            try s.finish()
        }
        if let l = try r.object("limits") {
            config.limits.maxStringBytes = try l.int("maxStringBytes", default: config.limits.maxStringBytes, in: 1...EventLimits.contract.maxStringBytes)
            config.limits.maxFrameBytes = try l.int("maxFrameBytes", default: config.limits.maxFrameBytes, in: 0...EventLimits.contract.maxFrameBytes)
            config.limits.maxPayloadBytes = try l.int("maxPayloadBytes", default: config.limits.maxPayloadBytes, in: 2...EventLimits.contract.maxPayloadBytes)
            try l.finish()
        }
        try r.finish()
        return config
    }

    /// The effective configuration as JSON, with token hashes masked, for `--print-config`.
    public var printable: String {
        func s(_ v: String) -> String {
            var out = [UInt8]()
            CanonicalJSON.writeString(v, into: &out)
            return String(decoding: out, as: UTF8.self)
        }
        let pg = database.timescaledb
        let tokens = server.tokens.map { t in
            "{\"sha256\": \"***\", \"roles\": [\(t.roles.map { s($0.rawValue) }.joined(separator: ", "))]"
                + (t.siteId.map { ", \"siteId\": \(s($0))" } ?? "") + "}"
        }
        return """
        {
          "core": { "siteId": \(s(core.siteId)) },
          "database": {
            "type": \(s(database.type.rawValue)),
            "sqlite": {
              "path": \(s(database.sqlite.path)), "durability": \(s(database.sqlite.durability.rawValue)),
              "retentionAfter": \(database.sqlite.retentionAfter.map(s) ?? "null"), "maxBytes": \(database.sqlite.maxBytes)
            },
            "timescaledb": {
              "host": \(s(pg.host)), "port": \(pg.port), "database": \(s(pg.database)), "user": \(s(pg.user)),
              "password_env": \(s(pg.passwordEnv)),
              "pool": { "minSize": \(pg.pool.minSize), "maxSize": \(pg.pool.maxSize), "readMaxSize": \(pg.pool.readMaxSize), "commandTimeout": \(pg.pool.commandTimeout), "connectionTimeout": \(pg.pool.connectionTimeout) },
              "hypertable": { "chunkInterval": \(s(pg.hypertable.chunkInterval)), "compressionAfter": \(s(pg.hypertable.compressionAfter)), "retentionAfter": \(s(pg.hypertable.retentionAfter)) },
              "tls": \(s(pg.tls.rawValue)), "caFile": \(pg.caFile.map(s) ?? "null")
            },
            "dual": { "primary": \(s(database.dual.primary.rawValue)), "verifyEvery": \(s(database.dual.verifyEvery)), "verifyWindow": \(s(database.dual.verifyWindow)), "sweepEvery": \(s(database.dual.sweepEvery)) }
          },
          "server": { "host": \(s(server.host)), "port": \(server.port), "maxBodyBytes": \(server.maxBodyBytes), "maxQueryLimit": \(server.maxQueryLimit), "maxPageBytes": \(server.maxPageBytes),
                      "maxEventsPerBatch": \(server.maxEventsPerBatch), "maxQueryRange": \(server.maxQueryRange.map(s) ?? "null"),
                      "maxStreamsPerToken": \(server.maxStreamsPerToken), "maxStreamMessageBytes": \(server.maxStreamMessageBytes),
                      "idleTimeoutSeconds": \(server.idleTimeoutSeconds), "tokens": [\(tokens.joined(separator: ", "))],
                      "tls": \(server.tls.map { "{ \"certificate\": \(s($0.certificate)), \"key\": \(s($0.key)) }" } ?? "null") },
          "sync": {
            "enabled": \(sync.enabled), "upstream": \(s(sync.upstream)), "token_env": \(s(sync.tokenEnv)), "batchSize": \(sync.batchSize),
            "maxBatchBytes": \(sync.maxBatchBytes), "compression": \(s(sync.compression)), "maxBackoffSeconds": \(sync.maxBackoffSeconds), "maxConcurrentBatches": \(sync.maxConcurrentBatches),
            "caFile": \(sync.caFile.map(s) ?? "null")
          },
          "limits": { "maxStringBytes": \(limits.maxStringBytes), "maxFrameBytes": \(limits.maxFrameBytes), "maxPayloadBytes": \(limits.maxPayloadBytes) }
        }
        """
    }
}

/// One JSON object of a configuration file, read key by key; `finish()` rejects keys never read.
private final class ConfigObject {
    let members: [String: JSONValue]
    let path: String
    var used = Set<String>()

    init(_ value: JSONValue, path: String) throws(ConfigurationError) {
        guard case .object(let list) = value else {
            throw ConfigurationError(key: path, rule: "must be an object, found \(value.typeName)")
        }
        var members = [String: JSONValue]()
        for member in list { members[member.key] = member.value }
        self.members = members
        self.path = path
    }

    func key(_ name: String) -> String { path.isEmpty ? name : "\(path).\(name)" }

    func value(_ name: String) -> JSONValue? {
        used.insert(name)
        return members[name]
    }

    func finish() throws(ConfigurationError) {
        if let unknown = members.keys.sorted().first(where: { !used.contains($0) }) {
            throw ConfigurationError(key: key(unknown), rule: "unknown key")
        }
    }

    func object(_ name: String) throws(ConfigurationError) -> ConfigObject? {
        guard let v = value(name) else { return nil }
        return try ConfigObject(v, path: key(name))
    }

    /// Absent or null: nil.
    func optionalObject(_ name: String) throws(ConfigurationError) -> ConfigObject? {
        guard let value = members[name], value != .null else {
            used.insert(name)
            return nil
        }
        return try object(name)
    }

    func array(_ name: String) throws(ConfigurationError) -> [JSONValue]? {
        guard let v = value(name) else { return nil }
        guard case .array(let elements) = v else { throw ConfigurationError(key: key(name), rule: "must be an array, found \(v.typeName)") }
        return elements
    }

    func string(_ name: String, default def: String?, nonEmpty: Bool = false) throws(ConfigurationError) -> String {
        guard let v = value(name) else {
            guard let def else { throw ConfigurationError(key: key(name), rule: "required") }
            return def
        }
        guard case .string(let s) = v else { throw ConfigurationError(key: key(name), rule: "must be a string, found \(v.typeName)") }
        if nonEmpty, s.isEmpty { throw ConfigurationError(key: key(name), rule: "must not be empty") }
        return s
    }

    /// Absent or null: nil.
    func optionalString(_ name: String) throws(ConfigurationError) -> String? {
        guard let value = members[name], value != .null else {
            used.insert(name)
            return nil
        }
        return try string(name, default: nil, nonEmpty: true)
    }

    func stringArray(_ name: String) throws(ConfigurationError) -> [String] {
        guard let elements = try array(name) else { throw ConfigurationError(key: key(name), rule: "required") }
        return try elements.map { (e: JSONValue) throws(ConfigurationError) -> String in
            guard case .string(let s) = e else { throw ConfigurationError(key: key(name), rule: "must hold strings, found \(e.typeName)") }
            return s
        }
    }

    func int(_ name: String, default def: Int, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let v = value(name) else { return def }
        guard case .number(let n) = v else { throw ConfigurationError(key: key(name), rule: "must be an integer, found \(v.typeName)") }
        guard n.isIntegerLiteral, let i = n.int64 else {
            // 1e12 or 1.5e3 is a whole number out of range, not a fraction.
            if n.double.isFinite, n.double == n.double.rounded() {
                let fits = n.double >= Double(range.lowerBound) && n.double <= Double(range.upperBound)
                throw ConfigurationError(
                    key: key(name),
                    rule: fits ? "must be written as a plain integer, found \(n.double)"
                        : "must be between \(range.lowerBound) and \(range.upperBound), found \(n.double)")
            }
            throw ConfigurationError(key: key(name), rule: "must be an integer, found a fraction (\(n.double))")
        }
        guard range.contains(Int(i)) else {
            throw ConfigurationError(key: key(name), rule: "must be between \(range.lowerBound) and \(range.upperBound), found \(i)")
        }
        return Int(i)
    }

    func bool(_ name: String, default def: Bool) throws(ConfigurationError) -> Bool {
        guard let v = value(name) else { return def }
        guard case .bool(let b) = v else { throw ConfigurationError(key: key(name), rule: "must be true or false, found \(v.typeName)") }
        return b
    }

    func choice<T: RawRepresentable & CaseIterable>(_ name: String, default def: T) throws(ConfigurationError) -> T where T.RawValue == String {
        let s = try string(name, default: def.rawValue)
        guard let choice = T(rawValue: s) else {
            let options = T.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
            throw ConfigurationError(key: key(name), rule: "must be one of \(options), found \(quoted(s))")
        }
        return choice
    }

    /// A PostgreSQL interval such as `1 day`, `12 hours`, `90 days`.
    func interval(_ name: String, default def: String) throws(ConfigurationError) -> String {
        let s = try string(name, default: def)
        let parts = s.split(separator: " ")
        let units: Set<String> = ["minute", "minutes", "hour", "hours", "day", "days", "week", "weeks", "month", "months", "year", "years"]
        guard parts.count == 2, let n = Int(parts[0]), n > 0, units.contains(String(parts[1])) else {
            throw ConfigurationError(key: key(name), rule: "must be a positive count and a unit, like \"1 day\" or \"12 hours\", found \(quoted(s))")
        }
        return s
    }
}
