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

    /// Whether the TimescaleDB extension is installed for the server the tests start.
    public static var timescaleDBInstalled: Bool {
        let root = "/usr/share/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return versions.contains { FileManager.default.fileExists(atPath: "\(root)/\($0)/extension/timescaledb.control") }
    }

    /// A private cluster, for tests that stop and start their server; `destroy()` removes it.
    public struct PrivateCluster: Sendable {
        public var locator: String
        public var password: String
        public var ctl: String
        public var port: Int { Int(locator.split(separator: ":").last!.split(separator: "/").first!)! }

        /// `options`: extra server settings, e.g. `-c shared_preload_libraries=timescaledb`.
        public static func start(options: String? = nil) async throws -> PrivateCluster {
            // Output to a file, not a pipe: the server it starts must not hold our pipe open.
            let outPath = FileManager.default.temporaryDirectory.appendingPathComponent("nova-pgcluster-\(UUID().uuidString).out").path
            FileManager.default.createFile(atPath: outPath, contents: nil)
            defer { try? FileManager.default.removeItem(atPath: outPath) }
            let script = Fixtures.repositoryRoot.appendingPathComponent("Scripts/postgres-test-cluster").path
            let errPath = outPath + ".err"
            defer { try? FileManager.default.removeItem(atPath: errPath) }
            let status = try await runTool("/usr/bin/env", ["NOVA_PG_OPTIONS=\(options ?? "")", script, "--print"], stdout: outPath, stderr: errPath)
            let lines = ((try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            guard status == 0, lines.count == 3 else {
                let reason = ((try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "").suffix(1_000)
                throw ProcessError("could not start a private PostgreSQL cluster (exit \(status)): \(reason)")
            }
            return PrivateCluster(locator: lines[0], password: lines[1], ctl: lines[2])
        }

        /// Where a store on database `database` of this cluster lives.
        public func location(database: String = "postgres") throws -> PostgresLocation {
            var location = try PostgresLocation(locator: locator, environment: ["NOVA_DB_PASSWORD": password])
            location.database = database
            return location
        }

        /// Rows of one query (each row's columns as text), for checking server state.
        public func rows(_ sql: String) async throws -> [[String]] {
            try await TestPostgres.withConnection(try location()) { connection in
                var out = [[String]]()
                for try await row in try await connection.query(PostgresQuery(unsafeSQL: sql), logger: quietLogger) {
                    out.append(try row.map { cell in try cell.decode(String?.self) ?? "" })
                }
                return out
            }
        }

        /// Kills the server and removes the cluster before returning, for a `defer`. A destroy left
        /// to a new task there was lost whenever the test process ended first, and the server
        /// kept running after the tests (found on this machine: a TimescaleDB cluster of a test
        /// run still up an hour later).
        public func destroy() {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ctl)
            process.arguments = ["destroy"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            guard (try? process.run()) != nil else { return }
            process.waitUntilExit()
        }

        /// `stop` (kill), `start`, or `destroy` (kill and remove).
        public func control(_ action: String) async throws {
            let status = try await runTool(ctl, [action])
            guard status == 0 else { throw ProcessError("\(ctl) \(action) failed (\(status))") }
        }

        /// Runs one statement on database `database` of this cluster.
        public func execute(_ sql: String, database: String = "postgres") async throws {
            try await TestPostgres.withConnection(try location(database: database)) { connection in
                _ = try await connection.query(PostgresQuery(unsafeSQL: sql), logger: quietLogger).collect()
            }
        }
    }

    /// A new empty database on the test server; returns its location.
    public static func createDatabase(prefix: String = "nova_t") async throws -> PostgresLocation {
        let (locator, password) = try server()
        let name = "\(prefix)_\(UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: ""))"
        try await admin { client in
            try await client.query(PostgresQuery(unsafeSQL: #"CREATE DATABASE "\#(name)" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8'"#), logger: quietLogger)
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
            try await client.query(PostgresQuery(unsafeSQL: #"DROP DATABASE IF EXISTS "\#(name)" WITH (FORCE)"#), logger: quietLogger)
        }
    }

    /// Runs `body` on one direct connection to the test server's `postgres` database.
    public static func admin<T: Sendable>(_ body: @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let (locator, password) = try server()
        return try await withConnection(try PostgresLocation(locator: locator, environment: ["NOVA_DB_PASSWORD": password]), body)
    }

    /// Runs `body` on one direct connection to `location`, closed afterwards.
    ///
    /// A plain connection, not a pool: cancelling a pool's `run()` while it is still opening a
    /// connection was seen to hang a loaded test run.
    public static func withConnection<T: Sendable>(_ location: PostgresLocation, _ body: @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        var configuration = try location.connectionConfiguration()
        configuration.options.connectTimeout = .seconds(30)
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: quietLogger)
        do {
            let result = try await body(connection)
            try? await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
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
            await awaitEnd(of: running, within: .seconds(30), "PostgresStore.run() of \(location.database), cancelled,")
            await dropDatabase(location.database)
        })
    }
}
