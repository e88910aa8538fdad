/// A parsed JSON value that keeps what the contract needs and generic parsers lose: whether a
/// number was written as an integer and fits int64 (for `sequence`), duplicate keys (rejected),
/// and member order (irrelevant to JCS, but useful in messages).
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object([JSONMember])

    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    /// The value of `key` in an object, or nil.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }
}

public struct JSONMember: Sendable, Equatable {
    public var key: String
    public var value: JSONValue

    public init(_ key: String, _ value: JSONValue) {
        self.key = key
        self.value = value
    }
}

/// A JSON number as an IEEE double (as JCS sees it), plus its exact int64 when the literal was an
/// integer that fits.
public struct JSONNumber: Sendable, Equatable {
    public var double: Double
    public var int64: Int64?
    /// The literal had no fraction and no exponent (it may still be outside int64).
    public var isIntegerLiteral: Bool

    public init(double: Double, int64: Int64?, isIntegerLiteral: Bool) {
        self.double = double
        self.int64 = int64
        self.isIntegerLiteral = isIntegerLiteral
    }

    public init(_ value: Int64) {
        self.init(double: Double(value), int64: value, isIntegerLiteral: true)
    }

    public static func == (a: JSONNumber, b: JSONNumber) -> Bool { a.double == b.double }
}

/// A syntax error, with the byte offset at which it was found.
public struct JSONSyntaxError: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public var offset: Int
    public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}
