import NovaCore
import PostgresNIO

/// The ordered lane read as a named prepared statement, one per shape of `LaneSQL.select` (lane,
/// timebase, keyset or `from`, filter, snapshot), run on the store's read pool, whose sessions
/// keep one generic plan per statement (``PostgresLocation/clientConfiguration(maximumConnections:reads:)``).
///
/// perf of the query benchmark (20 clients asking for 1-second windows as fast as they can)
/// showed PostgreSQL spending a quarter to a third of its time parsing and planning each read
/// afresh, as it does for an unnamed statement. Prepared and planned once per connection, the
/// read's plan prunes partitions when it runs (`EXPLAIN EXECUTE` shows "Subplans Removed") over
/// the same ordered index scans, with no Sort. Measured (2,000,000 events, alternating): 2,263
/// and 2,269 queries/s through the HTTP API against 1,942 and 1,971; the bare driver 6,503 and
/// 6,163 against 4,933 and 4,655. postgres-nio names a prepared statement by its type and takes
/// its SQL from the type, so the shape's parts are type parameters, chosen by
/// ``PostgresStore/statement(_:)``.
protocol LaneReadStatement: PostgresPreparedStatement where Row == PostgresRow {
    init(bindings: PostgresBindings)
}

/// A value known from a type: the parts of a read's shape.
protocol ShapePart<Value> {
    associatedtype Value
    static var value: Value { get }
}

enum RawLane: ShapePart { static var value: Lane { .raw } }
enum ParsedLane: ShapePart { static var value: Lane { .parsed } }
enum UILane: ShapePart { static var value: Lane { .ui } }
enum CommandLane: ShapePart { static var value: Lane { .command } }
enum MetadataLane: ShapePart { static var value: Lane { .metadata } }
enum CanonicalTime: ShapePart { static var value: Timebase { .canonical } }
enum SourceTime: ShapePart { static var value: Timebase { .source } }
enum With: ShapePart { static var value: Bool { true } }
enum Without: ShapePart { static var value: Bool { false } }

struct ShapedRead<
    L: ShapePart<Lane>, T: ShapePart<Timebase>, Keyset: ShapePart<Bool>, Filter: ShapePart<Bool>, Snapshot: ShapePart<Bool>
>: LaneReadStatement {
    typealias Row = PostgresRow

    /// Short and unique per shape: PostgreSQL cuts a statement's name at 63 bytes.
    static var name: String {
        "nova_read_\(L.value.rawValue)_\(T.value.rawValue)_\(Keyset.value ? 1 : 0)\(Filter.value ? 1 : 0)\(Snapshot.value ? 1 : 0)"
    }

    static var sql: String {
        LaneSQL(L.value).select(T.value, keyset: Keyset.value, hasFilter: Filter.value, hasSnapshot: Snapshot.value, dialect: PostgresStore.dialect)
    }

    let bindings: PostgresBindings
    init(bindings: PostgresBindings) { self.bindings = bindings }
    func makeBindings() -> PostgresBindings { bindings }
    func decodeRow(_ row: PostgresRow) -> PostgresRow { row }
}

extension PostgresStore {
    /// Runs the ordered read of `read` on `conn` (of a read pool) as its shape's prepared
    /// statement, handing each row to `body` until it returns false; the driver discards the rest.
    static func forEachRow(
        of read: LaneRead, on conn: PostgresConnection, logger: Logger, _ body: (PostgresRow) throws -> Bool
    ) async throws {
        try await run(Self.statement(read), on: conn, logger: logger, body)
    }

    private static func run<S: LaneReadStatement>(
        _ statement: S, on conn: PostgresConnection, logger: Logger, _ body: (PostgresRow) throws -> Bool
    ) async throws {
        for try await row in try await conn.execute(statement, logger: logger) where try !body(row) { break }
    }

    /// The statement of `read`'s shape with its parameters bound in `LaneSQL` order.
    static func statement(_ read: LaneRead) -> any LaneReadStatement {
        let bindings = binds(read)
        switch read.lane {
        case .raw: return shape(RawLane.self, read, bindings)
        case .parsed: return shape(ParsedLane.self, read, bindings)
        case .ui: return shape(UILane.self, read, bindings)
        case .command: return shape(CommandLane.self, read, bindings)
        case .metadata: return shape(MetadataLane.self, read, bindings)
        }
    }

    private static func shape<L: ShapePart<Lane>>(_: L.Type, _ read: LaneRead, _ b: PostgresBindings) -> any LaneReadStatement {
        read.timebase == .canonical ? shape(L.self, CanonicalTime.self, read, b) : shape(L.self, SourceTime.self, read, b)
    }

    private static func shape<L: ShapePart<Lane>, T: ShapePart<Timebase>>(_: L.Type, _: T.Type, _ read: LaneRead, _ b: PostgresBindings) -> any LaneReadStatement {
        read.effectiveAfter != nil ? shape(L.self, T.self, With.self, read, b) : shape(L.self, T.self, Without.self, read, b)
    }

    private static func shape<L: ShapePart<Lane>, T: ShapePart<Timebase>, K: ShapePart<Bool>>(
        _: L.Type, _: T.Type, _: K.Type, _ read: LaneRead, _ b: PostgresBindings
    ) -> any LaneReadStatement {
        read.filter != nil ? shape(L.self, T.self, K.self, With.self, read, b) : shape(L.self, T.self, K.self, Without.self, read, b)
    }

    private static func shape<L: ShapePart<Lane>, T: ShapePart<Timebase>, K: ShapePart<Bool>, F: ShapePart<Bool>>(
        _: L.Type, _: T.Type, _: K.Type, _: F.Type, _ read: LaneRead, _ b: PostgresBindings
    ) -> any LaneReadStatement {
        read.throughSeq != nil ? ShapedRead<L, T, K, F, With>(bindings: b) : ShapedRead<L, T, K, F, Without>(bindings: b)
    }
}
