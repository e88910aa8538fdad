import Foundation
import NIOSSL
import NovaCore
import PostgresNIO

/// Where a hub store lives and how to reach it: `database.timescaledb` of the configuration, or a
/// `postgres://USER@HOST:PORT/DB` locator with the password from the environment.
public struct PostgresLocation: Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var user: String
    public var database: String
    public var password: String?
    /// The environment variable the password came from, for messages.
    public var passwordEnv: String
    public var pool: NovaConfiguration.Pool
    public var hypertable: NovaConfiguration.Hypertable
    public private(set) var tls: NovaConfiguration.PostgresTLS
    /// What `verify-full` trusts, read at start so that a bad file stops `nova` at once; nil: the
    /// system's roots.
    private var trustRoots: [NIOSSLCertificate]?

    public init(configuration pg: NovaConfiguration.Postgres, environment: [String: String] = ProcessInfo.processInfo.environment) throws(StoreError) {
        host = pg.host
        port = pg.port
        user = pg.user
        database = pg.database
        passwordEnv = pg.passwordEnv
        password = environment[pg.passwordEnv]
        pool = pg.pool
        hypertable = pg.hypertable
        tls = .disable
        try setTLS(pg.tls, caFile: pg.caFile, key: "database.timescaledb.caFile")
    }

    mutating func setTLS(_ mode: NovaConfiguration.PostgresTLS, caFile: String?, key: String) throws(StoreError) {
        tls = mode
        trustRoots = nil
        guard let caFile else { return }
        do {
            trustRoots = try NIOSSLCertificate.fromPEMFile(caFile)
        } catch {
            throw StoreError(.invalidRequest, "\(key): cannot read certificates from \(caFile) (\(error))")
        }
        if trustRoots?.isEmpty ?? true { throw StoreError(.invalidRequest, "\(key): \(caFile) holds no PEM certificate") }
    }

    /// The TLS settings of every connection to this location, pooled or direct.
    private var tlsConfiguration: TLSConfiguration? {
        switch tls {
        case .disable:
            return nil
        case .require:
            // libpq's `require`: encrypted, the certificate not checked.
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .none
            return configuration
        case .verifyFull:
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .fullVerification
            if let trustRoots { configuration.trustRoots = .certificates(trustRoots) }
            return configuration
        }
    }

    /// The pool's settings for this location: one place, so that the store, the tools and the
    /// baselines all connect the same way (TLS included).
    ///
    /// `reads`: a pool for the ordered reads alone, whose sessions keep a generic plan for each
    /// prepared statement (`plan_cache_mode`). PostgreSQL's own choice kept planning every read
    /// afresh (the generic plan's estimate for an unknown time range is far above a custom plan
    /// for a known one), and the setting is the whole session's, so it gets sessions of its own:
    /// the hub's other statements stay planned per call.
    public func clientConfiguration(maximumConnections: Int? = nil, reads: Bool = false) -> PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: user, password: password, database: database,
            tls: tlsConfiguration.map { .require($0) } ?? .disable)
        configuration.options.maximumConnections = maximumConnections ?? (reads ? pool.readMaxSize : pool.maxSize)
        configuration.options.minimumConnections = min(pool.minSize, configuration.options.maximumConnections)
        configuration.options.connectTimeout = .seconds(pool.connectionTimeout)
        configuration.options.additionalStartupParameters = Self.sessionSettings + (reads ? [("plan_cache_mode", "force_generic_plan")] : [])
        return configuration
    }

    /// Session settings sent at connection start. JIT off: PostgreSQL compiles any statement
    /// whose estimated cost passes `jit_above_cost`, and the append statement's estimate grows
    /// with the square of the batch (its CTE joins are estimated as near cross products), so from
    /// about 8,000 events a batch paid hundreds of milliseconds of LLVM compilation, more than
    /// running it: measured, a 20,000-event statement took 635 ms of which LLVM was the larger
    /// part, where 5,000 events took 58 ms. Off, `nova migrate` (10,000-event batches) went from
    /// 39,600 to 60,900 events/s. The hub's statements are short and planned per call; none
    /// gains from JIT.
    static let sessionSettings = [("jit", "off")]

    /// The settings of one connection outside a pool (probes, LISTEN).
    public func connectionConfiguration() throws(StoreError) -> PostgresConnection.Configuration {
        let connectionTLS: PostgresConnection.Configuration.TLS
        do {
            connectionTLS = try tlsConfiguration.map { .require(try NIOSSLContext(configuration: $0)) } ?? .disable
        } catch {
            throw StoreError(.invalidRequest, "\(self): cannot set up TLS (\(error))")
        }
        var configuration = PostgresConnection.Configuration(
            host: host, port: port, username: user, password: password, database: database, tls: connectionTLS)
        configuration.options.connectTimeout = .seconds(Int64(pool.connectionTimeout))
        configuration.options.additionalStartupParameters = Self.sessionSettings
        return configuration
    }

    /// Parses `postgres://USER@HOST:PORT/DB` (or `postgresql://`), optionally with libpq's
    /// `?sslmode=disable|require|verify-full&sslrootcert=PATH`; the password comes from
    /// `passwordEnv`, never from the locator.
    public init(locator: String, configuration: NovaConfiguration.Postgres = .init(), environment: [String: String] = ProcessInfo.processInfo.environment) throws(StoreError) {
        try self.init(configuration: configuration, environment: environment)
        guard let url = URLComponents(string: locator), url.scheme == "postgres" || url.scheme == "postgresql",
              let host = url.host, !host.isEmpty
        else {
            throw StoreError(.invalidRequest, "\(locator): not a PostgreSQL locator; expected postgres://USER@HOST:PORT/DB")
        }
        guard url.password == nil else {
            throw StoreError(.invalidRequest, "\(Self.redacted(locator)): put the password in \(passwordEnv), not in the locator")
        }
        self.host = host
        if let port = url.port { self.port = port }
        if let user = url.user, !user.isEmpty { self.user = user }
        let db = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        if !db.isEmpty { database = db }
        var mode = NovaConfiguration.PostgresTLS.disable
        var rootCert: String?
        for item in url.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value.flatMap(NovaConfiguration.PostgresTLS.init(rawValue:)) else {
                    throw StoreError(.invalidRequest, "\(locator): sslmode must be disable, require or verify-full")
                }
                mode = value
            case "sslrootcert":
                guard let value = item.value, !value.isEmpty else { throw StoreError(.invalidRequest, "\(locator): sslrootcert needs a file") }
                rootCert = value
            default:
                throw StoreError(.invalidRequest, "\(locator): unknown parameter \(item.name) (only sslmode and sslrootcert are supported)")
            }
        }
        if rootCert != nil, mode != .verifyFull {
            throw StoreError(.invalidRequest, "\(locator): sslrootcert is used only with sslmode=verify-full")
        }
        try setTLS(mode, caFile: rootCert, key: "sslrootcert")
    }

    static func redacted(_ locator: String) -> String {
        guard var url = URLComponents(string: locator), url.password != nil else { return locator }
        url.password = "***"
        return url.string ?? "postgres://***"
    }

    public var description: String { "postgres://\(user)@\(host):\(port)/\(database)" + (tls == .disable ? "" : "?sslmode=\(tls.rawValue)") }
}
