import Foundation
import NovaCore

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

    public init(configuration pg: NovaConfiguration.Postgres, environment: [String: String] = ProcessInfo.processInfo.environment) {
        host = pg.host
        port = pg.port
        user = pg.user
        database = pg.database
        passwordEnv = pg.passwordEnv
        password = environment[pg.passwordEnv]
        pool = pg.pool
        hypertable = pg.hypertable
    }

    /// Parses `postgres://USER@HOST:PORT/DB` (or `postgresql://`); the password comes from
    /// `passwordEnv`, never from the locator.
    public init(locator: String, configuration: NovaConfiguration.Postgres = .init(), environment: [String: String] = ProcessInfo.processInfo.environment) throws(StoreError) {
        self.init(configuration: configuration, environment: environment)
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
        if let query = url.query, !query.isEmpty {
            throw StoreError(.invalidRequest, "\(locator): parameters after '?' are not supported")
        }
    }

    static func redacted(_ locator: String) -> String {
        guard var url = URLComponents(string: locator), url.password != nil else { return locator }
        url.password = "***"
        return url.string ?? "postgres://***"
    }

    public var description: String { "postgres://\(user)@\(host):\(port)/\(database)" }
}
