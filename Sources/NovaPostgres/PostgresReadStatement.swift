import Logging
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

/// The read shapes' statements as prepared on each connection of one pool, forgotten when the
/// connection closes (its session and statements end with it).
final class PreparedReads: Sendable {
    private let statements = Mutex<[PostgresConnection.ID: [Int: PreparedQuery]]>([:])

    /// Shape `shape`'s statement on `conn`, prepared there on first use. A pooled connection
    /// serves one lease at a time, so no two callers prepare on the same one at once.
    func statement(_ shape: Int, on conn: PostgresConnection) async throws -> PreparedQuery {
        let id = conn.id
        if let known = statements.withLock({ $0[id]?[shape] }) { return known }
        let prepared = try await conn.prepare(query: readShapes[shape].sql).get()
        let firstOnConnection = statements.withLock { statements in
            defer { statements[id, default: [:]][shape] = prepared }
            return statements[id] == nil
        }
        if firstOnConnection {
            conn.closeFuture.whenComplete { [self] _ in statements.withLock { $0[id] = nil } }
        }
        return prepared
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
    static func forEachRow(
        of read: LaneRead, on conn: PostgresConnection, prepared: PreparedReads, _ body: @escaping (PostgresRow) throws -> Bool
    ) async throws {
        let statement = try await prepared.statement(ReadShape.index(of: read), on: conn)
        let rows = RowHandler(body)
        try await statement.execute(binds(read)) { row in try rows.take(row) }.get()
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
