import NIOCore
import NovaCore
import PostgresNIO
import Synchronization

/// The ordered lane read as a prepared statement, one per shape of `LaneSQL.select` (lane,
/// timebase, keyset or `from`, filter, snapshot), prepared once on each connection of a read
/// pool, whose sessions keep one generic plan per statement
/// (``PostgresLocation/clientConfiguration(maximumConnections:reads:)``).
///
/// perf of the query benchmark (20 clients asking for 1-second windows as fast as they can)
/// showed PostgreSQL spending a quarter to a third of its time parsing and planning each read
/// afresh, as it does for an unnamed statement. Prepared and planned once per connection, the
/// read's plan prunes partitions when it runs (`EXPLAIN EXECUTE` shows "Subplans Removed") over
/// the same ordered index scans, with no Sort. Measured (2,000,000 events, alternating): 2,263
/// and 2,269 queries/s through the HTTP API against 1,942 and 1,971; the bare driver 6,503 and
/// 6,163 against 4,933 and 4,655.
struct ReadShape: Sendable {
    let sql: String

    init(lane: Lane, timebase: Timebase, keyset: Bool, filter: Bool, snapshot: Bool) {
        sql = LaneSQL(lane).select(timebase, keyset: keyset, hasFilter: filter, hasSnapshot: snapshot, dialect: PostgresStore.dialect)
    }

    static func index(lane: Lane, timebase: Timebase, keyset: Bool, filter: Bool, snapshot: Bool) -> Int {
        func bit(_ b: Bool) -> Int { b ? 1 : 0 }
        return (((lane.rank * 2 + bit(timebase == .source)) * 2 + bit(keyset)) * 2 + bit(filter)) * 2 + bit(snapshot)
    }

    /// `read`'s place in ``readShapes``.
    static func index(of read: LaneRead) -> Int {
        index(lane: read.lane, timebase: read.timebase, keyset: read.effectiveAfter != nil, filter: read.filter != nil, snapshot: read.throughSeq != nil)
    }
}

/// Every shape's SQL, built once.
let readShapes: [ReadShape] = Lane.allCases.sorted().flatMap { lane in
    [Timebase.canonical, .source].flatMap { timebase in
        [false, true].flatMap { keyset in
            [false, true].flatMap { filter in
                [false, true].map { snapshot in
                    ReadShape(lane: lane, timebase: timebase, keyset: keyset, filter: filter, snapshot: snapshot)
                }
            }
        }
    }
}

/// The read shapes' statements as prepared on each connection, forgotten when the connection
/// closes (its session and statements end with it).
///
/// Keyed by the connection object, not its `id`, which each pool numbers on its own: a statement
/// runs on the connection it was prepared on, whatever connection it is looked up for. The entry
/// holds its connection, so no other can take its address while it is there.
final class PreparedReads: Sendable {
    private let statements = Mutex<[ObjectIdentifier: [Int: PreparedQuery]]>([:])

    /// Shape `shape`'s statement on `conn`, prepared there on first use. A pooled connection
    /// serves one lease at a time, so no two callers prepare on the same one at once.
    func statement(_ shape: Int, on conn: PostgresConnection) async throws -> PreparedQuery {
        let id = ObjectIdentifier(conn)
        if let known = statements.withLock({ $0[id]?[shape] }) { return known }
        let prepared = try await PostgresStore.answer(conn.prepare(query: readShapes[shape].sql), on: conn)
        let firstOnConnection = statements.withLock { statements in
            defer { statements[id, default: [:]][shape] = prepared }
            return statements[id] == nil
        }
        if firstOnConnection {
            conn.closeFuture.whenComplete { [self] _ in statements.withLock { $0[id] = nil } }
        }
        return prepared
    }

    /// Forgets `conn`'s statements, which its session no longer has.
    func forget(_ conn: PostgresConnection) {
        _ = statements.withLock { $0.removeValue(forKey: ObjectIdentifier(conn)) }
    }

    /// The connections with statements prepared (for tests: closed ones are forgotten).
    var connections: Int { statements.withLock { $0.count } }
}

extension PostgresStore {
    /// Runs the ordered read of `read` on `conn` (of the pool that `prepared` belongs to) as its
    /// shape's prepared statement, handing each row to `body` as it arrives, on the connection's
    /// event loop, until `body` returns false; the rest of the answer is passed over.
    ///
    /// Rows are taken in postgres-nio's callback rather than through its async sequence: each
    /// row of the sequence cost an async call with a cancellation handler, an allocation of its
    /// frame and a lock (perf of the query benchmark: a tenth of the hub's CPU), where a callback
    /// is a plain call on the thread that decoded the row. Measured (10,000,000 events): the
    /// hub's CPU per query 0.49 and 0.43 ms against 0.51 and 0.53 ms.
    ///
    /// A session that lost its statements while the connection stayed open (`DEALLOCATE ALL`,
    /// say, or a plan whose result type changed) has them prepared again, once: the server
    /// refuses such a statement at its start, before any row.
    static func forEachRow(
        of read: LaneRead, on conn: PostgresConnection, prepared: PreparedReads, _ body: @escaping (PostgresRow) throws -> Bool
    ) async throws {
        let rows = RowHandler(body)
        func run() async throws {
            try await answer(prepared.statement(ReadShape.index(of: read), on: conn).execute(binds(read)) { row in try rows.take(row) }, on: conn)
        }
        do {
            try await run()
        } catch where ["26000", "0A000"].contains(sqlState(error) ?? "") {
            prepared.forget(conn)
            try await run()
        }
    }

    /// The answer of a request just sent on `conn`, or `connectionClosed` when the connection
    /// had closed by then: postgres-nio writes a request to its channel with no promise, so one
    /// sent as the channel closes is lost and its answer never comes (a read on a session the
    /// server had just ended waited for the store's 70 s bound). The check runs on the
    /// connection's event loop after the request's write; a request that the connection did
    /// take is failed by the connection itself when it closes.
    static func answer<T: Sendable>(_ request: EventLoopFuture<T>, on conn: PostgresConnection) async throws -> T {
        let loop = request.eventLoop
        let answer = loop.makePromise(of: T.self)
        let settled = NIOLoopBoundBox.makeBoxSendingValue(false, eventLoop: loop)
        request.whenComplete { result in
            guard !settled.value else { return }
            settled.value = true
            answer.completeWith(result)
        }
        loop.execute {
            guard conn.isClosed, !settled.value else { return }
            settled.value = true
            answer.fail(PostgresError.connectionClosed)
        }
        return try await answer.futureResult.get()
    }

    /// `read`'s parameters in `LaneSQL.select`'s order, in binary form.
    static func binds(_ read: LaneRead) -> [PostgresData] {
        func text(_ s: String) -> PostgresData { PostgresData(type: .text, formatCode: .binary, value: ByteBuffer(string: s)) }
        func int8(_ v: Int64) -> PostgresData { PostgresData(type: .int8, formatCode: .binary, value: ByteBuffer(integer: v)) }
        func time(_ t: Timestamp) -> PostgresData {
            PostgresData(type: .timestamptz, formatCode: .binary, value: ByteBuffer(integer: t.microseconds - PostgresTimestamp.epochOffset))
        }
        var binds = [text(read.scopeId), time(read.to), int8(Int64(read.limit))]
        if let after = read.effectiveAfter {
            binds.append(time(after.time))
            if after.lane == .raw {
                binds.append(text(after.connectionId))
                binds.append(int8(after.sequence))
            }
            after.eventId.withUnsafeBytes { binds.append(PostgresData(type: .bytea, formatCode: .binary, value: ByteBuffer(bytes: $0))) }
        } else {
            binds.append(time(read.from))
        }
        if let filter = read.filter { binds.append(text(filter)) }
        if let seq = read.throughSeq { binds.append(int8(seq)) }
        return binds
    }
}

/// A read's row handler, called by postgres-nio for one statement's rows, one after another on
/// its connection's event loop, while the reading task waits for the statement's end; the task
/// reads what the handler gathered only after that.
private final class RowHandler: @unchecked Sendable {
    private let body: (PostgresRow) throws -> Bool
    private var done = false

    init(_ body: @escaping (PostgresRow) throws -> Bool) {
        self.body = body
    }

    func take(_ row: PostgresRow) throws {
        guard !done else { return }
        done = try !body(row)
    }
}
