import Foundation
import Logging
import NIOCore
import NIOPosix
import NovaCore
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The server's SQLSTATE of a failure, looking inside transaction wrappers; also in the form
/// postgres-nio's callback API gives it (``PostgresError``).
func sqlState(_ error: any Error) -> String? {
    if let tx = error as? PostgresTransactionError, let inner = tx.closureError ?? tx.beginError ?? tx.commitError {
        return sqlState(inner)
    }
    if case .server(let message)? = error as? PostgresError { return message.fields[.sqlState] }
    return (error as? PSQLError)?.serverInfo?[.sqlState]
}

/// The hub store on PostgreSQL (with or without TimescaleDB), through postgres-nio's pool.
///
/// The store is a `Service`: `run()` runs the connection pool, brings the schema up to date
/// (retrying with back-off while the server is unreachable or refuses the credentials, so `nova
/// serve` starts and answers `/readyz` with the reason), then keeps partitions maintained. Until it
/// is ready, every operation fails with `.unavailable` (HTTP 503).
///
/// ```swift
/// let store = PostgresStore(location: PostgresLocation(configuration: config.database.timescaledb))
/// async let running: Void = store.run()
/// try await store.waitUntilReady()
/// ```
public final class PostgresStore: EventStore, Service, Sendable {
    public let location: PostgresLocation
    let client: PostgresClient
    /// The ordered reads' own pool (``ReadShape``), of up to `pool.readMaxSize` connections
    /// beside `client`'s.
    let readClient: PostgresClient
    /// The read statements prepared on `readClient`'s connections.
    let preparedReads = PreparedReads()
    let logger: Logger
    let partitions: PartitionCatalog
    let state: Mutex<State>

    enum State {
        case starting(lastError: String?)
        case ready(storeId: String, mode: PostgresSchema.Mode)
        case failed(StoreError)
        case closed
    }

    /// Whether `run()` creates the schema in a database that has none (tools that only read say no).
    let createIfMissing: Bool
    /// Whether `run()` maintains partitions (the server does; one-shot tools must not drop data).
    let maintainsPartitions: Bool
    /// Whether `run()` keeps retrying when the server refuses the credentials or has no such
    /// database. A server (`nova serve`) does, since an operator may fix either while it waits and
    /// says why on `/readyz`; a one-shot tool gives up at once, since neither passes by retrying.
    let retriesRefusals: Bool
    /// Marks this process's commit notifications, which its own feed has no use for.
    let instance = String(UUID().uuidString.prefix(8)).lowercased()
    let notifications = CommitNotifications()

    public init(
        location: PostgresLocation, createIfMissing: Bool = true, maintainsPartitions: Bool = true, retriesRefusals: Bool = true,
        logger: Logger = Logger(label: "nova.postgres")
    ) {
        self.location = location
        self.createIfMissing = createIfMissing
        self.maintainsPartitions = maintainsPartitions
        self.retriesRefusals = retriesRefusals
        self.logger = logger
        func pool(reads: Bool) -> PostgresClient {
            var configuration = location.clientConfiguration(reads: reads)
            configuration.options.additionalStartupParameters += [
                ("statement_timeout", "\(location.pool.commandTimeout)s"), ("application_name", "nova"), ("TimeZone", "UTC"),
            ]
            return PostgresClient(configuration: configuration, backgroundLogger: logger)
        }
        client = pool(reads: false)
        readClient = pool(reads: true)
        partitions = PartitionCatalog()
        state = Mutex(.starting(lastError: nil))
    }

    public var description: String {
        switch state.withLock({ $0 }) {
        case .ready(let storeId, let mode): "PostgreSQL store \(location) (schema v\(PostgresSchema.version), mode \(mode.rawValue), storeId \(storeId))"
        default: "PostgreSQL store \(location)"
        }
    }

    /// The mode the store was created in, once ready.
    public var mode: String? {
        if case .ready(_, let mode) = state.withLock({ $0 }) { return mode.rawValue }
        return nil
    }

    public var storeId: String? {
        if case .ready(let storeId, _) = state.withLock({ $0 }) { return storeId }
        return nil
    }

    /// Runs the pool, prepares the schema (retrying while the server is unavailable), then maintains
    /// partitions until cancelled or shut down gracefully. Throws only for a store it must refuse
    /// (a newer schema, a foreign database).
    public func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await self.client.run() }
            group.addTask { await self.readClient.run() }
            do {
                try await cancelWhenGracefulShutdown {
                    try await self.prepareWithRetry()
                    if self.maintainsPartitions, case .ready(_, .partitioned) = self.state.withLock({ $0 }) {
                        try await PartitionMaintenance(store: self).run()
                    } else {
                        try? await Task.sleep(for: .seconds(365 * 86_400 * 100))
                    }
                }
            } catch is CancellationError {
                // Shut down gracefully: not a failure.
            }
            group.cancelAll()
        }
        state.withLock { $0 = .closed }
    }

    /// One direct connection attempt, outside the pool, which would otherwise retry silently: it
    /// fails fast with the server's real answer (refused, wrong credentials, no such database).
    private func probe() async throws {
        let connection = try await PostgresConnection.connect(configuration: try directConfiguration, id: 0, logger: logger)
        try await connection.close()
    }

    private var directConfiguration: PostgresConnection.Configuration {
        get throws { try location.connectionConfiguration() }
    }

    /// The channel every append notifies when it commits (``insertSQL(lanes:notifyAs:)``).
    static let commitChannel = "nova_commits"

    /// Listens on its own connection (a pooled one would be held forever) for the notification
    /// every append sends at commit (its payload: the sender's instance and the last `ingestSeq`
    /// committed), so that several `nova serve` processes on one database wake their streams for
    /// each other's commits. A process's own notifications are skipped: its appends feed it.
    /// Reconnects with back-off; calls `onCommit(nil)` after each (re)connect too, since
    /// notifications sent while disconnected are lost.
    public func watchCommits(_ onCommit: @escaping @Sendable (_ committed: Int64?) -> Void) async throws {
        var delay = Duration.milliseconds(250)
        while !Task.isCancelled {
            do {
                let connection = try await PostgresConnection.connect(configuration: try directConfiguration, id: 1, logger: logger)
                do {
                    try await connection.listen(on: Self.commitChannel) { notifications in
                        delay = .milliseconds(250)
                        onCommit(nil)
                        let own = instance + ":"
                        for try await notification in notifications where !notification.payload.hasPrefix(own) {
                            onCommit(Int64(notification.payload.split(separator: ":").last ?? ""))
                        }
                    }
                } catch {
                    try? await connection.close()
                    throw error
                }
                try? await connection.close()
            } catch {
                if Task.isCancelled { return }
                logger.warning("commit notifications lost, reconnecting", metadata: ["error": "\(mapError(error).message)", "retryIn": "\(delay)"])
            }
            try await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
    }

    /// Wrong password, no such role or no such database (mapped in ``mapError(_:)``).
    static let refusals: Set<String> = ["28P01", "28000", "3D000"]

    private func prepareWithRetry() async throws {
        var delay = Duration.milliseconds(250)
        while !Task.isCancelled {
            do {
                try await probe()
                let (storeId, mode) = try await PostgresSchema.prepare(client, location: location, create: createIfMissing, logger: logger)
                if mode == .partitioned { try await partitions.load(self) }
                state.withLock { $0 = .ready(storeId: storeId, mode: mode) }
                logger.info("store ready", metadata: ["store": "\(location)", "mode": "\(mode.rawValue)", "storeId": "\(storeId)"])
                return
            } catch {
                let storeError = mapError(error)
                if storeError.kind == .unusable || (!retriesRefusals && Self.refusals.contains(sqlState(error) ?? "")) {
                    state.withLock { $0 = .failed(storeError) }
                    // A tool reports the error it is thrown; a server logs why it stopped.
                    logger.log(level: retriesRefusals ? .error : .debug, "store refused", metadata: ["error": "\(storeError.message)"])
                    throw storeError
                }
                state.withLock { $0 = .starting(lastError: storeError.message) }
                logger.error("store not reachable, retrying", metadata: ["error": "\(storeError.message)", "retryIn": "\(delay)"])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(30))
            }
        }
    }

    /// Runs `body` on a pooled connection (of the read pool with `reads`), but gives up with
    /// `.unavailable` when none can be had within `connectionTimeout`: while the server is down the
    /// pool keeps trying to connect, and a request must fail (503) rather than wait for it.
    ///
    /// The deadline is an event-loop timer that cancels the lease, not a racing child task: this
    /// wraps every query, and a sleeping task per query cost a third of the hub's query throughput.
    func connection<T: Sendable>(reads: Bool = false, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let acquired = Flag()
        let timedOut = Flag()
        let client = reads ? readClient : client
        // The operation resumes the caller itself (one task per query, not a second one waiting
        // on the first); `outcome` takes whichever comes first, the answer or the bound below.
        let outcome = Resumed<T>()
        let operation = Task {
            do {
                outcome.resume(.success(try await client.withConnection { conn in
                    acquired.set()
                    return try await body(conn)
                }))
            } catch {
                outcome.resume(.failure(error))
            }
        }
        // A query in flight when the server died was seen never to complete (the connection
        // gone, the await left hanging), which hung `nova migrate` and sync applies. So the
        // operation as a whole is bounded too: past the server's own statement timeout plus the
        // connection timeout it is abandoned, and the caller gets `.unavailable`. The bound is
        // armed by the lease timer, on the event loop, so a query schedules one timer from off
        // the loop (each such schedule wakes the loop), not two.
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let server = location
        let limit = location.pool.connectionTimeout + location.pool.commandTimeout
        let bound = LaterTimer()
        let timer = loop.scheduleTask(in: .seconds(Int64(location.pool.connectionTimeout))) {
            if !acquired.isSet {
                timedOut.set()
                operation.cancel()
            }
            // Armed either way: a cancelled lease that never returns is bounded as well.
            bound.arm(loop.scheduleTask(in: .seconds(Int64(limit - server.pool.connectionTimeout))) {
                operation.cancel()
                outcome.resume(.failure(StoreError(.unavailable, "\(server): no answer from the server within \(limit) s (it is down or overloaded)")))
            })
        }
        defer {
            timer.cancel()
            bound.cancel()
        }
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    outcome.set(continuation)
                }
            } onCancel: {
                operation.cancel()
            }
        } catch where timedOut.isSet {
            throw StoreError(.unavailable, "\(location): no connection to the server within \(location.pool.connectionTimeout) s (it is down or overloaded)")
        }
    }

    /// Waits until the schema is ready, or throws the reason it cannot be.
    public func waitUntilReady(timeout: Duration = .seconds(60)) async throws(StoreError) {
        let deadline = ContinuousClock.now + timeout
        while true {
            switch state.withLock({ $0 }) {
            case .ready: return
            case .failed(let error): throw error
            case .closed: throw StoreError(.unavailable, "\(location): the store is closed")
            case .starting(let lastError):
                guard ContinuousClock.now < deadline else {
                    throw StoreError(.unavailable, lastError ?? "\(location): not ready after \(timeout)")
                }
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Throws `.unavailable` (or the refusal) unless the store is ready.
    func ensureReady() throws(StoreError) -> PostgresSchema.Mode {
        switch state.withLock({ $0 }) {
        case .ready(_, let mode): return mode
        case .failed(let error): throw error
        case .closed: throw StoreError(.unavailable, "\(location): the store is closed")
        case .starting(let lastError): throw StoreError(.unavailable, lastError ?? "\(location): connecting")
        }
    }

    public func checkReady() async throws(StoreError) {
        _ = try ensureReady()
        do {
            let logger = logger
            let version = try await connection { conn in
                try await conn.query(#"SELECT "value" FROM "novaStore" WHERE "key" = 'schemaVersion'"#, logger: logger).collect().first?.decode(String.self)
            }
            guard let version, Int(version) == PostgresSchema.version else {
                throw StoreError(.unusable, "\(location): schema is not current")
            }
        } catch {
            throw mapError(error)
        }
    }

    public func close() async {
        state.withLock { $0 = .closed }
    }

    /// The gist of a connection failure ("Connection refused"), without NIO's nested wrappers.
    static func reason(_ error: (any Error)?) -> String? {
        guard let error else { return nil }
        let text = "\(error)"
        for known in ["Connection refused", "connection reset", "No route to host", "timed out", "Network is unreachable", "Name or service not known"]
        where text.localizedCaseInsensitiveContains(known) {
            return known
        }
        return text.count > 200 ? String(text.prefix(200)) + "…" : text
    }

    /// Maps a driver or server failure to what callers act on; the message names the server and
    /// the rule, never query arguments.
    func mapError(_ error: any Error) -> StoreError {
        if let error = error as? StoreError { return error }
        if let tx = error as? PostgresTransactionError, let inner = tx.closureError ?? tx.beginError ?? tx.commitError {
            return mapError(inner)
        }
        // The reads' callback API (``PreparedReads``) gives postgres-nio's older error type.
        switch error as? PostgresError {
        case .server(let message)?:
            return serverError(state: message.fields[.sqlState] ?? "", message: message.fields[.message] ?? "server error")
        case .connectionClosed?:
            return StoreError(.unavailable, "\(location): cannot reach the server (the connection closed)")
        case .protocol(let problem)?:
            // An unclean shutdown has no case of its own in this type, only its text.
            let lost = problem == "Unexpected connection close"
            return StoreError(lost ? .unavailable : .internalError, "\(location): \(lost ? "cannot reach the server (\(problem))" : problem)")
        case nil:
            break
        }
        // A connection's own failure, as the callback API passes it on.
        if error is IOError || error is ChannelError {
            return StoreError(.unavailable, "\(location): cannot reach the server (\(error))")
        }
        guard let psql = error as? PSQLError else {
            if error is CancellationError { return StoreError(.unavailable, "\(location): cancelled") }
            // The pool's own errors (its module is not public): it cannot get a connection now.
            if String(reflecting: type(of: error)).contains("ConnectionPoolError") {
                return StoreError(.unavailable, "\(location): cannot reach the server (new connections are failing; the pool keeps retrying)")
            }
            return StoreError(.internalError, "\(location): \(error)")
        }
        switch psql.code {
        case .server:
            return serverError(state: psql.serverInfo?[.sqlState] ?? "", message: psql.serverInfo?[.message] ?? "server error")
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .poolClosed, .uncleanShutdown:
            return StoreError(.unavailable, "\(location): cannot reach the server (\(Self.reason(psql.underlying) ?? "\(psql.code)"))")
        case .authMechanismRequiresPassword:
            return StoreError(.unavailable, "\(location): the server asks for a password; set \(location.passwordEnv)")
        default:
            return StoreError(.internalError, "\(location): \(psql.code)")
        }
    }

    /// The store's error for the server's error `state` (SQLSTATE).
    private func serverError(state: String, message: String) -> StoreError {
        switch state {
        case "28P01", "28000":
            return StoreError(.unavailable, "\(location): the server refused the credentials of user \(location.user) (\(message)); check \(location.passwordEnv)")
        case "3D000":
            return StoreError(.unavailable, "\(location): \(message); create it, or name another (database.timescaledb.database in config.json, the path of a postgres:// locator)")
        case "53100":
            return StoreError(.full, "\(location): the server's disk is full (\(message))")
        case "57014", "57P01", "57P02", "57P03", "53300", "40001", "40P01":
            return StoreError(.unavailable, "\(location): \(message)")
        default:
            return StoreError(.internalError, "\(location): \(message) (SQLSTATE \(state))")
        }
    }
}

/// A one-way flag shared between tasks.
/// A continuation resumed by whichever comes first, the operation or its deadline.
final class Resumed<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var early: Result<T, any Error>?
        var done = false
    }

    private let state = Mutex(State())

    func set(_ continuation: CheckedContinuation<T, any Error>) {
        let early = state.withLock { s -> Result<T, any Error>? in
            if let early = s.early { return early }
            s.continuation = continuation
            return nil
        }
        if let early { continuation.resume(with: early) }
    }

    func resume(_ result: Result<T, any Error>) {
        let continuation = state.withLock { s -> CheckedContinuation<T, any Error>? in
            guard !s.done else { return nil }
            s.done = true
            guard let c = s.continuation else {
                s.early = result
                return nil
            }
            s.continuation = nil
            return c
        }
        continuation?.resume(with: result)
    }
}

/// A timer armed by another timer, which its owner may cancel before or after it is armed.
final class LaterTimer: Sendable {
    private let state = Mutex<(timer: Scheduled<Void>?, cancelled: Bool)>((nil, false))

    func arm(_ timer: Scheduled<Void>) {
        let cancelled = state.withLock { s in
            if !s.cancelled { s.timer = timer }
            return s.cancelled
        }
        if cancelled { timer.cancel() }
    }

    func cancel() {
        state.withLock { s in
            s.cancelled = true
            return s.timer.take()
        }?.cancel()
    }
}

final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}
