import GRDB
import GRDBSQLite
import NovaCore

/// Binding and reading through SQLite's C API on GRDB's cached statements: the ingest and query
/// hot paths bind and read hundreds of thousands of values a second, where building GRDB's
/// `StatementArguments` and `Row` values per row would cost more than SQLite itself.
struct RawStatement {
    let handle: OpaquePointer

    init(_ statement: Statement) {
        handle = statement.sqliteStatement
    }

    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    func reset() {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
    }

    func bind(_ index: Int32, _ value: Int64) {
        sqlite3_bind_int64(handle, index, value)
    }

    func bind(_ index: Int32, _ value: String) {
        var value = value
        value.withUTF8 { utf8 in bindText(index, UnsafeRawBufferPointer(utf8)) }
    }

    /// Text, never NULL: an empty string is bound as a zero-length text.
    private func bindText(_ index: Int32, _ utf8: UnsafeRawBufferPointer) {
        if let base = utf8.baseAddress, utf8.count > 0 {
            sqlite3_bind_text(handle, index, base.assumingMemoryBound(to: CChar.self), Int32(utf8.count), Self.transient)
        } else {
            sqlite3_bind_text(handle, index, "", 0, Self.transient)
        }
    }

    func bind(_ index: Int32, blob: [UInt8]) {
        if blob.isEmpty {
            // A zero-length blob must still be a blob, not NULL.
            sqlite3_bind_zeroblob(handle, index, 0)
            return
        }
        blob.withUnsafeBytes { raw in
            _ = sqlite3_bind_blob(handle, index, raw.baseAddress, Int32(raw.count), Self.transient)
        }
    }

    func bind(_ index: Int32, _ id: EventID) {
        id.withUnsafeBytes { raw in
            _ = sqlite3_bind_blob(handle, index, raw.baseAddress, 32, Self.transient)
        }
    }

    /// Payloads are canonical JSON text.
    func bind(_ index: Int32, payload: CanonicalPayload) {
        payload.utf8.withUnsafeBytes { raw in bindText(index, raw) }
    }

    /// Binds the values of an ordering key in `LaneSQL` order: time, then the lane's tiebreak.
    func bind(from index: Int32, key: OrderingKey) {
        bind(index, key.time.microseconds)
        if key.lane == .raw {
            bind(index + 1, key.connectionId)
            bind(index + 2, key.sequence)
            bind(index + 3, key.eventId)
        } else {
            bind(index + 1, key.eventId)
        }
    }

    /// Steps once; true when a row is available.
    func step(_ db: Database) throws -> Bool {
        let code = sqlite3_step(handle)
        switch code {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
        }
    }

    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }

    func string(_ column: Int32) -> String {
        guard let text = sqlite3_column_text(handle, column) else { return "" }
        let count = Int(sqlite3_column_bytes(handle, column))
        return String(decoding: UnsafeBufferPointer(start: text, count: count), as: UTF8.self)
    }

    func bytes(_ column: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(handle, column))
        guard count > 0, let blob = sqlite3_column_blob(handle, column) else { return [] }
        return [UInt8](UnsafeRawBufferPointer(start: blob, count: count))
    }

    func eventId(_ column: Int32) -> EventID? {
        guard sqlite3_column_bytes(handle, column) == 32, let blob = sqlite3_column_blob(handle, column) else { return nil }
        return EventID(bytes: UnsafeRawBufferPointer(start: blob, count: 32))
    }
}
