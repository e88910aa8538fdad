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
        return b.getBytes(at: b.readerIndex, length: b.readableBytes)!
    }

    func eventId() throws(StoreError) -> EventID {
        guard let b = bytes, b.readableBytes == 32 else { throw StoreError(.internalError, "column \(columnName) is not a 32-byte id") }
        return b.withUnsafeReadableBytes { EventID(bytes: $0)! }
    }
}

/// The element and array types of a ``BinaryArray``.
protocol BinaryArrayKind {
    static var element: PostgresDataType { get }
    static var array: PostgresDataType { get }
}

enum Int4Elements: BinaryArrayKind {
    static var element: PostgresDataType { .int4 }
    static var array: PostgresDataType { .int4Array }
}

enum Int8Elements: BinaryArrayKind {
    static var element: PostgresDataType { .int8 }
    static var array: PostgresDataType { .int8Array }
}

enum TextElements: BinaryArrayKind {
    static var element: PostgresDataType { .text }
    static var array: PostgresDataType { .textArray }
}

enum ByteaElements: BinaryArrayKind {
    static var element: PostgresDataType { .bytea }
    static var array: PostgresDataType { .byteaArray }
}

enum TimestamptzElements: BinaryArrayKind {
    static var element: PostgresDataType { .timestamptz }
    static var array: PostgresDataType { .timestamptzArray }
}

/// A one-dimensional PostgreSQL array in binary format, written element by element straight into
/// one buffer: the ingest path binds a batch's columns this way, without an allocation per value.
struct BinaryArray<Kind: BinaryArrayKind>: PostgresNonThrowingEncodable {
    static var psqlType: PostgresDataType { Kind.array }
    static var psqlFormat: PostgresFormat { .binary }

    private(set) var count: Int32 = 0
    private var elements = ByteBuffer()

    mutating func append(raw: UnsafeRawBufferPointer) {
        elements.writeInteger(Int32(raw.count))
        elements.writeBytes(raw)
        count += 1
    }

    mutating func append(_ text: String) {
        var text = text
        text.withUTF8 { append(raw: UnsafeRawBufferPointer($0)) }
    }

    mutating func append(_ value: Int64) {
        elements.writeInteger(Int32(8))
        elements.writeInteger(value)
        count += 1
    }

    mutating func append(_ value: Int32) {
        elements.writeInteger(Int32(4))
        elements.writeInteger(value)
        count += 1
    }

    mutating func append(_ time: Timestamp) {
        append(time.microseconds - PostgresTimestamp.epochOffset)
    }

    func encode<JSONEncoder: PostgresJSONEncoder>(into buffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>) {
        buffer.writeInteger(Int32(count == 0 ? 0 : 1))  // dimensions
        buffer.writeInteger(Int32(0))  // no NULLs
        buffer.writeInteger(Kind.element.rawValue)
        guard count > 0 else { return }
        buffer.writeInteger(count)  // length of the dimension
        buffer.writeInteger(Int32(1))  // lower bound
        buffer.writeImmutableBuffer(elements)
    }
}
