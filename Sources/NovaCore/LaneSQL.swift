/// The SQL text that both stores share: table and column names (which are the contract's field
/// names) and the ordered, keyset-paged range read of one lane.
///
/// Only text is built here; each backend prepares and binds it. Keeping one builder means the two
/// stores cannot drift apart on ordering or paging.
public struct LaneSQL: Sendable {
    /// How a backend spells identifiers, placeholders and the filter term.
    public struct Dialect: Sendable {
        public var quote: @Sendable (String) -> String
        public var placeholder: @Sendable (Int) -> String
        /// Prefixed to the filter column so the planner does not treat the equality as an index
        /// constraint that would break the order (SQLite's `+column`).
        public var filterPrefix: String

        public init(quote: @escaping @Sendable (String) -> String, placeholder: @escaping @Sendable (Int) -> String, filterPrefix: String) {
            self.quote = quote
            self.placeholder = placeholder
            self.filterPrefix = filterPrefix
        }
    }

    public let lane: Lane
    public init(_ lane: Lane) { self.lane = lane }

    public static let commonColumns = ["scopeId", "sourceTruthTime", "canonicalTruthTime", "eventId"]

    public var table: String { "\(lane.rawValue)Events" }

    /// Every stored field of the lane, in the order inserts take them.
    public var columns: [String] { Self.commonColumns + lane.fieldNames }

    /// What a read returns: ``columns`` without `scopeId`, which every read names already (not
    /// sending it back was about 2% of the hub's read time).
    public var readColumns: [String] { Array(columns.dropFirst()) }

    public static func timeColumn(_ timebase: Timebase) -> String {
        timebase == .canonical ? "canonicalTruthTime" : "sourceTruthTime"
    }

    /// The lane's order after time.
    public var tiebreakColumns: [String] {
        lane == .raw ? ["connectionId", "sequence", "eventId"] : ["eventId"]
    }

    public func orderColumns(_ timebase: Timebase) -> [String] { [Self.timeColumn(timebase)] + tiebreakColumns }

    /// The name of the index that serves ordered reads on `timebase`.
    public func indexName(_ timebase: Timebase) -> String { "\(table)_\(timebase.rawValue)_order" }

    /// The ordered read of `LaneRead`. Placeholders, in order: 1 scopeId, 2 upper bound, 3 limit,
    /// then either the lower bound (4) or the keyset key (4…: time, then the tiebreak values),
    /// then the filter value when `hasFilter`, then the snapshot's `ingestSeq` when `hasSnapshot`.
    public func select(_ timebase: Timebase, keyset: Bool, hasFilter: Bool, hasSnapshot: Bool = false, dialect d: Dialect) -> String {
        let q = d.quote
        let time = q(Self.timeColumn(timebase))
        let order = orderColumns(timebase).map(q)
        var sql = "SELECT \(readColumns.map(q).joined(separator: ", ")) FROM \(q(table)) WHERE \(q("scopeId")) = \(d.placeholder(1))"
        var next = 4
        if keyset {
            let values = order.indices.map { d.placeholder(next + $0) }
            next += order.count
            sql += " AND (\(order.joined(separator: ", "))) > (\(values.joined(separator: ", ")))"
        } else {
            sql += " AND \(time) >= \(d.placeholder(next))"
            next += 1
        }
        sql += " AND \(time) < \(d.placeholder(2))"
        if hasFilter {
            sql += " AND \(d.filterPrefix)\(q(lane.filterField)) = \(d.placeholder(next))"
            next += 1
        }
        if hasSnapshot {
            sql += " AND \(d.filterPrefix)\(q("ingestSeq")) <= \(d.placeholder(next))"
        }
        sql += " ORDER BY \(order.joined(separator: ", ")) LIMIT \(d.placeholder(3))"
        return sql
    }
}

extension LaneSQL {
    /// Events committed in an `ingestSeq` window, in commit order: placeholders 1 the `ingestSeq`
    /// to start after, 2 the last one to include. The columns are ``readColumns`` (as a read's),
    /// then `scopeId`, then `ingestSeq`. A bounded window (not `LIMIT`) keeps the read
    /// proportional to its answer whatever index serves it.
    public func selectCommitted(dialect d: Dialect) -> String {
        let q = d.quote
        let seq = q("ingestSeq")
        return "SELECT \((readColumns + ["scopeId"]).map(q).joined(separator: ", ")), \(seq) FROM \(q(table)) WHERE \(seq) > \(d.placeholder(1)) AND \(seq) <= \(d.placeholder(2)) ORDER BY \(seq)"
    }

    /// The first `ingestSeq` after placeholder 1 (to step over a gap that retention left).
    public func selectNextCommitted(dialect d: Dialect) -> String {
        let seq = d.quote("ingestSeq")
        return "SELECT min(\(seq)) FROM \(d.quote(table)) WHERE \(seq) > \(d.placeholder(1))"
    }
}

extension LaneRead {
    /// The keyset key to bind, or nil to bind `from`: a key that sorts before `from` is dropped,
    /// since every event of the range is after it anyway.
    public var effectiveAfter: OrderingKey? {
        guard let after, after.time >= from else { return nil }
        return after
    }
}
