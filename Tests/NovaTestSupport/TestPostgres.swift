import Foundation
import Logging
import NovaCore
import NovaPostgres
import PostgresNIO

/// The PostgreSQL server that `Scripts/test` starts for the suite. Without it the PostgreSQL tests
/// fail loudly: they never skip.
public enum TestPostgres {
    public struct NotConfigured: Error, CustomStringConvertible {
        public var description: String {
            "NOVA_TEST_POSTGRES is not set: run the tests through Scripts/test, which starts a throwaway PostgreSQL server and exports its address"
        }
    }

    /// The server's admin locator (`postgres://nova@127.0.0.1:PORT/postgres`) and password.
    public static func server() throws -> (locator: String, password: String) {
        let env = ProcessInfo.processInfo.environment
        guard let locator = env["NOVA_TEST_POSTGRES"], let password = env["NOVA_TEST_POSTGRES_PASSWORD"] else { throw NotConfigured() }
        return (locator, password)
    }

    /// Stops (kills) or starts the test server, for fault tests.
    public static func control(_ action: String) throws {
        guard let ctl = ProcessInfo.processInfo.environment["NOVA_TEST_POSTGRES_CTL"] else { throw NotConfigured() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ctl)
        p.arguments = [action]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw ProcessError("\(ctl) \(action) failed (\(p.terminationStatus))") }
    }

    /// A new empty database on the test server; returns its location.
    public static func createDatabase(prefix: String = "nova_t") async throws -> PostgresLocation {
        let (locator, password) = try server()
        let name = "\(prefix)_\(UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: ""))"
        try await admin { client in
            try await client.query(PostgresQuery(unsafeSQL: #"CREATE DATABASE "\#(name)" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8'"#))
        }
        var location = try PostgresLocation(locator: locator, environment: ["NOVA_DB_PASSWORD": password])
        location.database = name
        location.pool.minSize = 0
        location.pool.maxSize = 8
        // Test data lies in 2026; retention must not race the tests for it.
        location.hypertable.retentionAfter = "1000 years"
        return location
    }

    public static func dropDatabase(_ name: String) async {
        try? await admin { client in
            try await client.query(PostgresQuery(unsafeSQL: #"DROP DATABASE IF EXISTS "\#(name)" WITH (FORCE)"#))
        }
    }

    /// Runs `body` with a short-lived client on the server's `postgres` database.
    public static func admin<T: Sendable>(_ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let (locator, password) = try server()
        let location = try PostgresLocation(locator: locator, environment: ["NOVA_DB_PASSWORD": password])
        let client = PostgresClient(configuration: .init(
            host: location.host, port: location.port, username: location.user, password: password, database: location.database, tls: .disable))
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            let result = try await body(client)
            group.cancelAll()
            return result
        }
    }

    /// A running hub store on a new database, and a cleanup that stops it and drops the database.
    public static func makeStore(logger: Logger = quietLogger) async throws -> (PostgresStore, @Sendable () async -> Void) {
        let location = try await createDatabase()
        let store = PostgresStore(location: location, logger: logger)
        let running = Task { try await store.run() }
        do {
            try await store.waitUntilReady(timeout: .seconds(60))
        } catch {
            running.cancel()
            await dropDatabase(location.database)
            throw error
        }
        return (store, {
            running.cancel()
            _ = await running.result
            await dropDatabase(location.database)
        })
    }
}
