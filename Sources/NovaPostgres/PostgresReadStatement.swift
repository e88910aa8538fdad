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

    static var name: String { readShapes[shape].name }
    static var sql: String { readShapes[shape].sql }

    /// This shape's place in ``readShapes``.
    static var shape: Int {
        ReadShape.index(lane: L.value, timebase: T.value, keyset: Keyset.value, filter: Filter.value, snapshot: Snapshot.value)
    }

    let bindings: PostgresBindings
    init(bindings: PostgresBindings) { self.bindings = bindings }
    func makeBindings() -> PostgresBindings { bindings }
    func decodeRow(_ row: PostgresRow) -> PostgresRow { row }
}

/// A read shape's statement name and SQL.
struct ReadShape: Sendable {
    let name: String
    let sql: String

    /// Short and unique per shape: PostgreSQL cuts a statement's name at 63 bytes.
    init(lane: Lane, timebase: Timebase, keyset: Bool, filter: Bool, snapshot: Bool) {
        name = "nova_read_\(lane.rawValue)_\(timebase.rawValue)_\(keyset ? 1 : 0)\(filter ? 1 : 0)\(snapshot ? 1 : 0)"
        sql = LaneSQL(lane).select(timebase, keyset: keyset, hasFilter: filter, hasSnapshot: snapshot, dialect: PostgresStore.dialect)
    }

    static func index(lane: Lane, timebase: Timebase, keyset: Bool, filter: Bool, snapshot: Bool) -> Int {
        func bit(_ b: Bool) -> Int { b ? 1 : 0 }
        return (((lane.rank * 2 + bit(timebase == .source)) * 2 + bit(keyset)) * 2 + bit(filter)) * 2 + bit(snapshot)
    }
}

/// Every shape's name and SQL, built once: postgres-nio asks a statement's type for both on every
/// execute, and building them each time was about 1% of the hub's query CPU (perf).
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
