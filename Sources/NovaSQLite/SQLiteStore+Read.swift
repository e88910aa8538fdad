import GRDB
import NovaCore

extension SQLiteStore {
    static let dialect = LaneSQL.Dialect(quote: { $0 }, placeholder: { "?\($0)" }, filterPrefix: "+")

    public func read(_ read: LaneRead) async throws(StoreError) -> LaneReadResult {
        if read.limit <= 0 || read.from >= read.to { return LaneReadResult(events: [], reachedBytes: false) }
        do {
            return try await pool.read { db in try Self.read(read, db: db) }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    /// The SQL of an ordered lane read, for `EXPLAIN QUERY PLAN` checks.
    public static func selectSQL(_ read: LaneRead) -> String {
        LaneSQL(read.lane).select(
            read.timebase, keyset: read.effectiveAfter != nil, hasFilter: read.filter != nil, hasSnapshot: read.throughSeq != nil, dialect: dialect)
    }

    private static func read(_ read: LaneRead, db: Database) throws -> LaneReadResult {
        let s = try prepare(read, sql: selectSQL(read), db: db)
        var events = [Event]()
        events.reserveCapacity(min(read.limit, 1024))
        var bytes = 0
        var reached = false
        while try s.step(db) {
            // Measured before it is appended, not read back (which copies it).
            let event = try decode(s, lane: read.lane, scopeId: read.scopeId)
            if read.maxBytes != nil { bytes += event.preimageLength }
            events.append(event)
            if let maxBytes = read.maxBytes, bytes >= maxBytes {
                reached = true
                break
            }
        }
        s.reset()
        return LaneReadResult(events: events, reachedBytes: reached)
    }

    /// The cached statement of `sql` with the parameters of `read` bound in `LaneSQL` order.
    private static func prepare(_ read: LaneRead, sql: String, db: Database) throws -> RawStatement {
        let after = read.effectiveAfter
        let s = RawStatement(try db.cachedStatement(sql: sql))
        s.reset()
        s.bind(1, read.scopeId)
        s.bind(2, read.to.microseconds)
        s.bind(3, Int64(read.limit))
        var next: Int32 = 4
        if let after {
            s.bind(from: 4, key: after)
            next += after.lane == .raw ? 4 : 2
        } else {
            s.bind(4, read.from.microseconds)
            next += 1
        }
        if let filter = read.filter {
            s.bind(next, filter)
            next += 1
        }
        if let seq = read.throughSeq { s.bind(next, seq) }
        return s
    }

    public func readCommitted(_ lane: Lane, seqs: ClosedRange<Int64>, maxBytes: Int?) async throws(StoreError) -> [CommittedEvent] {
        do {
            return try await pool.read { db in
                let s = RawStatement(try db.cachedStatement(sql: LaneSQL(lane).selectCommitted(dialect: Self.dialect)))
                s.reset()
                s.bind(1, seqs.lowerBound - 1)
                s.bind(2, seqs.upperBound)
                var rows = [CommittedEvent]()
                var bytes = 0
                let scopeColumn = Int32(LaneSQL(lane).readColumns.count)
                while try s.step(db) {
                    let event = try Self.decode(s, lane: lane, scopeId: s.string(scopeColumn))
                    if maxBytes != nil { bytes += event.preimageLength }
                    rows.append(CommittedEvent(seq: s.int64(scopeColumn + 1), event: event))
                    if let maxBytes, bytes >= maxBytes { break }
                }
                s.reset()
                return rows
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func nextCommittedSeq(_ lane: Lane, after: Int64) async throws(StoreError) -> Int64? {
        do {
            return try await pool.read { db in
                try Int64.fetchOne(db, sql: LaneSQL(lane).selectNextCommitted(dialect: Self.dialect), arguments: [after])
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func lastCommittedSeq() async throws(StoreError) -> Int64 {
        do {
            return try await pool.read { db in try Int64.fetchOne(db, sql: "SELECT value FROM novaStore WHERE key = 'lastIngestSeq'") ?? 0 }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    /// A row of `LaneSQL.readColumns` back into an event of `scopeId`.
    static func decode(_ s: RawStatement, lane: Lane, scopeId: String) throws -> Event {
        guard let eventId = s.eventId(2) else {
            throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "an eventId is not 32 bytes")
        }
        let fields: LaneFields
        switch lane {
        case .raw:
            fields = .raw(connectionId: s.string(3), sequence: s.int64(4), bytes: s.bytes(5))
        case .parsed:
            fields = .parsed(streamId: s.string(3), streamType: s.string(4), schemaVersion: s.string(5), payload: CanonicalPayload(canonicalUTF8: s.bytes(6)))
        case .ui:
            fields = .ui(viewId: s.string(3), payload: CanonicalPayload(canonicalUTF8: s.bytes(4)))
        case .command:
            fields = .command(targetId: s.string(3), commandType: s.string(4), requestedBy: s.string(5), payload: CanonicalPayload(canonicalUTF8: s.bytes(6)))
        case .metadata:
            fields = .metadata(metadataType: s.string(3), payload: CanonicalPayload(canonicalUTF8: s.bytes(4)))
        }
        return Event(
            scopeId: scopeId, sourceTruthTime: Timestamp(microseconds: s.int64(0)),
            canonicalTruthTime: Timestamp(microseconds: s.int64(1)), eventId: eventId, fields: fields)
    }
}

extension SQLiteStore {
    /// SQLite's plan for an ordered lane read, one line per step, to prove it is an index range
    /// scan with no sort step.
    public func explainQueryPlan(_ read: LaneRead) async throws(StoreError) -> [String] {
        do {
            return try await pool.read { db in
                let s = try Self.prepare(read, sql: "EXPLAIN QUERY PLAN " + Self.selectSQL(read), db: db)
                var lines = [String]()
                while try s.step(db) { lines.append(s.string(3)) }
                s.reset()
                return lines
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }
}
