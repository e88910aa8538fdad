import Logging
import NovaCore
import PostgresNIO

extension PostgresStore {
    static let dialect = LaneSQL.Dialect(quote: { "\"\($0)\"" }, placeholder: { "$\($0)" }, filterPrefix: "")

    public func read(_ read: LaneRead) async throws(StoreError) -> LaneReadResult {
        _ = try ensureReady()
        if read.limit <= 0 || read.from >= read.to { return LaneReadResult(events: [], reachedBytes: false) }
        do {
            let prepared = preparedReads
            return try await connection(reads: true) { conn in
                var events = [Event]()
                events.reserveCapacity(min(read.limit, 1024))
                var bytes = 0
                var reached = false
                try await Self.forEachRow(of: read, on: conn, prepared: prepared) { row in
                    // Measured before it is appended: read back from the array, each event was
                    // copied (perf of a REWIND: the event's copy went from 0.4% to 1.4%).
                    let event = try Self.decode(row, lane: read.lane, scopeId: read.scopeId)
                    if read.maxBytes != nil { bytes += event.preimageLength }
                    events.append(event)
                    reached = read.maxBytes.map { bytes >= $0 } ?? false
                    return !reached
                }
                return LaneReadResult(events: events, reachedBytes: reached)
            }
        } catch {
            throw mapError(error)
        }
    }

    public func readCommitted(_ lane: Lane, seqs: ClosedRange<Int64>, maxBytes: Int?) async throws(StoreError) -> [CommittedEvent] {
        _ = try ensureReady()
        do {
            let logger = logger
            var binds = PostgresBindings()
            binds.append(seqs.lowerBound - 1)
            binds.append(seqs.upperBound)
            let query = PostgresQuery(unsafeSQL: LaneSQL(lane).selectCommitted(dialect: Self.dialect), binds: binds)
            return try await connection { conn in
                var rows = [CommittedEvent]()
                var bytes = 0
                let scopeColumn = LaneSQL(lane).readColumns.count
                for try await row in try await conn.query(query, logger: logger) {
                    // `scopeId` and `ingestSeq` follow the read's columns; stepping an index to
                    // them makes no cells (the LIVE feed reads through here).
                    guard row.count == scopeColumn + 2 else { throw StoreError(.internalError, "a committed row has \(row.count) columns, not \(scopeColumn + 2)") }
                    let scopeAt = row.index(row.startIndex, offsetBy: scopeColumn)
                    let scopeId = try row[scopeAt].string()
                    let seq = try row[row.index(after: scopeAt)].int64()
                    let event = try Self.decode(row, lane: lane, scopeId: scopeId)
                    if let maxBytes { bytes += event.preimageLength }
                    rows.append(CommittedEvent(seq: seq, event: event))
                    if let maxBytes, bytes >= maxBytes { break }
                }
                return rows
            }
        } catch {
            throw mapError(error)
        }
    }

    public func nextCommittedSeq(_ lane: Lane, after: Int64) async throws(StoreError) -> Int64? {
        _ = try ensureReady()
        do {
            let logger = logger
            var binds = PostgresBindings()
            binds.append(after)
            let query = PostgresQuery(unsafeSQL: LaneSQL(lane).selectNextCommitted(dialect: Self.dialect), binds: binds)
            return try await connection { conn in
                try await conn.query(query, logger: logger).collect().first?.decode(Int64?.self)
            }
        } catch {
            throw mapError(error)
        }
    }

    public func lastCommittedSeq() async throws(StoreError) -> Int64 {
        _ = try ensureReady()
        do {
            let logger = logger
            return try await connection { conn in
                try await conn.query(#"SELECT "value" FROM "novaCounter" WHERE "name" = 'ingestSeq'"#, logger: logger)
                    .collect().first?.decode(Int64.self) ?? 0
            }
        } catch {
            throw mapError(error)
        }
    }

    /// A row of `LaneSQL.readColumns` back into an event of `scopeId`.
    static func decode(_ row: PostgresRow, lane: Lane, scopeId: String) throws -> Event {
        var cells = row.makeIterator()
        return try decode(&cells, lane: lane, scopeId: scopeId)
    }

    /// The next `LaneSQL.readColumns` of a row, cell by cell: reads are the hub's hottest path, and
    /// gathering a row's cells into an array first cost an allocation per event. (postgres-nio's
    /// `decode` of a tuple of types was slower still: its parameter packs instantiated generic
    /// metadata for every row, perf.)
    static func decode(_ cells: inout PostgresRow.Iterator, lane: Lane, scopeId: String) throws -> Event {
        let sourceTruthTime = try nextCell(&cells).timestamp()
        let canonicalTruthTime = try nextCell(&cells).timestamp()
        let eventId = try nextCell(&cells).eventId()
        let fields: LaneFields
        switch lane {
        case .raw:
            fields = .raw(connectionId: try nextCell(&cells).string(), sequence: try nextCell(&cells).int64(), bytes: try nextCell(&cells).byteArray())
        case .parsed:
            fields = .parsed(
                streamId: try nextCell(&cells).string(), streamType: try nextCell(&cells).string(), schemaVersion: try nextCell(&cells).string(),
                payload: CanonicalPayload(canonicalUTF8: try nextCell(&cells).byteArray()))
        case .ui:
            fields = .ui(viewId: try nextCell(&cells).string(), payload: CanonicalPayload(canonicalUTF8: try nextCell(&cells).byteArray()))
        case .command:
            fields = .command(
                targetId: try nextCell(&cells).string(), commandType: try nextCell(&cells).string(), requestedBy: try nextCell(&cells).string(),
                payload: CanonicalPayload(canonicalUTF8: try nextCell(&cells).byteArray()))
        case .metadata:
            fields = .metadata(metadataType: try nextCell(&cells).string(), payload: CanonicalPayload(canonicalUTF8: try nextCell(&cells).byteArray()))
        }
        return Event(scopeId: scopeId, sourceTruthTime: sourceTruthTime, canonicalTruthTime: canonicalTruthTime, eventId: eventId, fields: fields)
    }

    static func nextCell(_ cells: inout PostgresRow.Iterator) throws(StoreError) -> PostgresCell {
        guard let cell = cells.next() else { throw StoreError(.internalError, "a row has fewer columns than the lane's read") }
        return cell
    }

    /// PostgreSQL's plan for an ordered lane read with its values (`EXPLAIN`, text format), one
    /// line per node. Reads run the generic plan of a prepared statement (``ReadShape``), which
    /// the conformance tests check for the same shape.
    public func explain(_ read: LaneRead) async throws(StoreError) -> [String] {
        _ = try ensureReady()
        do {
            let logger = logger
            return try await connection { conn in
                var binds = PostgresBindings()
                for bind in Self.binds(read) { binds.append(bind) }
                let sql = "EXPLAIN " + readShapes[ReadShape.index(of: read)].sql
                let rows = try await conn.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger)
                var lines = [String]()
                for try await line in rows.decode(String.self) { lines.append(line) }
                return lines
            }
        } catch {
            throw mapError(error)
        }
    }

    public func stats() async throws(StoreError) -> StoreStats {
        _ = try ensureReady()
        do {
            let logger = logger
            return try await connection { conn in
            var lanes = [StoreStats.LaneStats]()
            let rows = try await conn.query("""
                SELECT "scopeId", "lane", "count", "firstCanonicalTruthTime", "lastCanonicalTruthTime", "firstSourceTruthTime", "lastSourceTruthTime"
                FROM "laneStats" ORDER BY "scopeId"
                """, logger: logger)
            for try await row in rows {
                let c = Array(row)
                guard let lane = Lane(rawValue: try c[1].string()) else { continue }
                lanes.append(StoreStats.LaneStats(
                    scopeId: try c[0].string(), lane: lane, count: try c[2].int64(),
                    firstCanonicalTruthTime: try c[3].timestamp(), lastCanonicalTruthTime: try c[4].timestamp(),
                    firstSourceTruthTime: try c[5].timestamp(), lastSourceTruthTime: try c[6].timestamp()))
            }
            lanes.sort { a, b in a.scopeId == b.scopeId ? a.lane < b.lane : a.scopeId.utf8.lexicographicallyPrecedes(b.scopeId.utf8) }
            let size = try await conn.query("SELECT pg_database_size(current_database())", logger: logger).collect().first?.decode(Int64.self) ?? 0
            return StoreStats(lanes: lanes, storeBytes: size)
            }
        } catch {
            throw mapError(error)
        }
    }

    /// The schema's state, for `nova schema check`.
    public func schemaReport() async throws(StoreError) -> String {
        _ = try ensureReady()
        do {
            let logger = logger
            let meta = try await connection { conn in
                var meta = [String: String]()
                for try await (key, value) in try await conn.query(#"SELECT "key", "value" FROM "novaStore""#, logger: logger).decode((String, String).self) {
                    meta[key] = value
                }
                return meta
            }
            let partitions = PartitionCatalog.parents.reduce(0) { $0 + self.partitions.partitions(of: $1).count }
            let mode = meta["mode"] == "timescaledb"
                ? "timescaledb (hypertables, compression after \(location.hypertable.compressionAfter), retention after \(location.hypertable.retentionAfter))"
                : "partitioned (native daily range partitions, \(partitions) partitions; retention after \(location.hypertable.retentionAfter); the timescaledb extension is not in use)"
            return """
                store: \(location)
                mode: \(mode)
                schema: v\(meta["schemaVersion"] ?? "?"), current
                storeId: \(meta["storeId"] ?? "?")
                createdAt: \(meta["createdAt"] ?? "?")
                """
        } catch {
            throw mapError(error)
        }
    }
}
