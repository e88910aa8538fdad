import NIOCore
import NovaCore
import PostgresNIO

/// A contract timestamp bound as TIMESTAMPTZ in binary form: integer microseconds since
/// 2000-01-01, exactly (Foundation's `Date` would round through a double).
struct PostgresTimestamp: PostgresNonThrowingEncodable {
    static let epochOffset: Int64 = 946_684_800_000_000

    var value: Timestamp

    static var psqlType: PostgresDataType { .timestamptz }
    static var psqlFormat: PostgresFormat { .binary }

    func encode<JSONEncoder: PostgresJSONEncoder>(into byteBuffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>) {
        byteBuffer.writeInteger(value.microseconds - Self.epochOffset)
    }
}

/// Raw bytes bound as BYTEA (ids, frames).
struct PostgresBytes: PostgresNonThrowingEncodable {
    var bytes: [UInt8]

    static var psqlType: PostgresDataType { .bytea }
    static var psqlFormat: PostgresFormat { .binary }

    func encode<JSONEncoder: PostgresJSONEncoder>(into byteBuffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>) {
        byteBuffer.writeBytes(bytes)
    }
}

/// Reading the binary result cells of NOVA's own queries, whose column types it knows.
extension PostgresCell {
    func int64() throws(StoreError) -> Int64 {
        guard var b = bytes else { throw StoreError(.internalError, "column \(columnName) is NULL") }
        switch b.readableBytes {
        case 8: return b.readInteger(as: Int64.self)!
        case 4: return Int64(b.readInteger(as: Int32.self)!)
        case 2: return Int64(b.readInteger(as: Int16.self)!)
        default: throw StoreError(.internalError, "column \(columnName) is not an integer")
        }
    }

    func timestamp() throws(StoreError) -> Timestamp {
        guard dataType == .timestamptz || dataType == .timestamp, var b = bytes, b.readableBytes == 8 else {
            throw StoreError(.internalError, "column \(columnName) is not a timestamp")
        }
        return Timestamp(microseconds: b.readInteger(as: Int64.self)! + PostgresTimestamp.epochOffset)
    }

    func string() throws(StoreError) -> String {
        guard let b = bytes else { throw StoreError(.internalError, "column \(columnName) is NULL") }
        return String(buffer: b)
    }

    func optionalString() -> String? {
        bytes.map { String(buffer: $0) }
    }

    func byteArray() throws(StoreError) -> [UInt8] {
        guard let b = bytes else { throw StoreError(.internalError, "column \(columnName) is NULL") }
        return Array(b.readableBytesView)
    }

    func eventId() throws(StoreError) -> EventID {
        guard let b = bytes, b.readableBytes == 32 else { throw StoreError(.internalError, "column \(columnName) is not a 32-byte id") }
        return b.withUnsafeReadableBytes { EventID(bytes: $0)! }
    }
}
