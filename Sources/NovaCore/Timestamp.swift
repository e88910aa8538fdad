/// A point in time as integer microseconds since the Unix epoch, UTC.
///
/// The contract's resolution is the microsecond everywhere, and both stores hold exactly this value
/// (SQLite as INTEGER, PostgreSQL as TIMESTAMPTZ), so no conversion can drift between them.
///
/// ```swift
/// let t = try Timestamp(rfc3339: "2026-01-27T15:32:15.123456789+01:00")
/// t.rfc3339 // "2026-01-27T14:32:15.123456Z"
/// ```
public struct Timestamp: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public var microseconds: Int64

    /// 1970-01-01T00:00:00Z, the earliest valid time.
    public static let min = Timestamp(microseconds: 0)
    /// 9999-12-31T23:59:59.999999Z, the latest valid time.
    public static let max = Timestamp(microseconds: 253_402_300_799_999_999)

    /// One microsecond past `max`: the exclusive upper bound of a range that includes every valid time.
    public static let endOfTime = Timestamp(microseconds: max.microseconds + 1)

    public init(microseconds: Int64) {
        self.microseconds = microseconds
    }

    public var isInContractRange: Bool { self >= .min && self <= .max }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.microseconds < rhs.microseconds }

    public var description: String { rfc3339 }

    /// The current wall-clock time, truncated to the microsecond.
    public static func now() -> Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp(microseconds: Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        do {
            self = try Timestamp(rfc3339: text)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rfc3339)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a text is not a contract timestamp; `description` is the rule, suitable after a field name.
public struct TimestampError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
}

extension Timestamp {
    /// Parses RFC 3339 with `Z` or a numeric offset and 0 to 9 fraction digits; digits past the sixth
    /// are truncated. Times outside 1970-01-01 through 9999-12-31 (after applying the offset) and
    /// impossible dates are rejected.
    public init(rfc3339 text: String) throws(TimestampError) {
        var copy = text
        let result: Timestamp? = copy.withUTF8 { Timestamp.parse($0) }
        guard let result else {
            // RFC 3339's grammar allows second 60; microseconds since the epoch cannot hold it.
            let b = Array(text.utf8)
            if b.count >= 20, b[16] == UInt8(ascii: ":"), b[17] == UInt8(ascii: "6"), b[18] == UInt8(ascii: "0"), Timestamp(rfc3339Prefix: b) != nil {
                throw TimestampError(description: "a leap second (second 60) cannot be stored; use the next second: \(quoted(text))")
            }
            throw TimestampError(description: "not an RFC 3339 timestamp: \(quoted(text))")
        }
        guard result.isInContractRange else {
            throw TimestampError(
                description: "outside 1970-01-01T00:00:00Z...9999-12-31T23:59:59.999999Z: \(quoted(text))")
        }
        self = result
    }

    /// Whether `b` is RFC 3339 with second 59 in place of its seconds (a leap second otherwise).
    private init?(rfc3339Prefix b: [UInt8]) {
        var copy = b
        copy[17] = UInt8(ascii: "5")
        copy[18] = UInt8(ascii: "9")
        guard let t = copy.withUnsafeBufferPointer({ Timestamp.parse($0) }) else { return nil }
        self = t
    }

    /// Returns nil for anything that is not RFC 3339 (zone required, real calendar date, no leap
    /// second); the caller checks the contract range.
    static func parse(_ b: UnsafeBufferPointer<UInt8>) -> Timestamp? {
        var i = 0
        func digits(_ count: Int) -> Int64? {
            guard i + count <= b.count else { return nil }
            var value: Int64 = 0
            for _ in 0..<count {
                let c = b[i]
                guard c >= 48, c <= 57 else { return nil }
                value = value * 10 + Int64(c - 48)
                i += 1
            }
            return value
        }
        func expect(_ c: UInt8) -> Bool {
            guard i < b.count, b[i] == c else { return false }
            i += 1
            return true
        }
        guard let year = digits(4), expect(UInt8(ascii: "-")),
              let month = digits(2), expect(UInt8(ascii: "-")),
              let day = digits(2) else { return nil }
        guard i < b.count, b[i] == UInt8(ascii: "T") || b[i] == UInt8(ascii: "t") else { return nil }
        i += 1
        guard let hour = digits(2), expect(UInt8(ascii: ":")),
              let minute = digits(2), expect(UInt8(ascii: ":")),
              let second = digits(2) else { return nil }
        var micros: Int64 = 0
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            var count = 0
            while i < b.count, b[i] >= 48, b[i] <= 57 {
                if count < 6 { micros = micros * 10 + Int64(b[i] - 48) }
                count += 1
                i += 1
            }
            guard count >= 1, count <= 9 else { return nil }
            for _ in Swift.min(count, 6)..<6 { micros *= 10 }
        }
        var offsetSeconds: Int64 = 0
        guard i < b.count else { return nil }
        switch b[i] {
        case UInt8(ascii: "Z"), UInt8(ascii: "z"):
            i += 1
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            let sign: Int64 = b[i] == UInt8(ascii: "-") ? -1 : 1
            i += 1
            guard let oh = digits(2), expect(UInt8(ascii: ":")), let om = digits(2), oh <= 23, om <= 59 else {
                return nil
            }
            offsetSeconds = sign * (oh * 3600 + om * 60)
        default:
            return nil
        }
        guard i == b.count else { return nil }
        guard month >= 1, month <= 12, day >= 1, day <= daysInMonth(year: year, month: month),
              hour <= 23, minute <= 59, second <= 59 else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetSeconds
        return Timestamp(microseconds: seconds * 1_000_000 + micros)
    }

    /// Always UTC with exactly six fraction digits, e.g. `2026-01-27T14:32:15.123000Z`.
    public var rfc3339: String {
        var out = [UInt8]()
        out.reserveCapacity(27)
        writeRFC3339(into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends ``rfc3339`` to `out` without building a string (answers write many times).
    public func writeRFC3339(into out: inout [UInt8]) {
        out.append(atMost: 27) { writeRFC3339(to: &$0) }
    }

    /// Appends the 27 bytes of ``rfc3339`` to `out`.
    public func writeRFC3339(to out: inout OutputSpan<UInt8>) {
        let (seconds, micros) = microseconds.floorDivided(by: 1_000_000)
        let (days, secondOfDay) = seconds.floorDivided(by: 86_400)
        let (y, m, d) = civilFromDays(days)
        // Two digits at a time, by constant divisions (a loop over a width was a quarter of an
        // answer's JSON writing in perf).
        func two(_ value: Int64, _ out: inout OutputSpan<UInt8>) {
            out.append(UInt8(truncatingIfNeeded: 48 + value / 10))
            out.append(UInt8(truncatingIfNeeded: 48 + value % 10))
        }
        two(y / 100, &out)
        two(y % 100, &out)
        out.append(UInt8(ascii: "-"))
        two(m, &out)
        out.append(UInt8(ascii: "-"))
        two(d, &out)
        out.append(UInt8(ascii: "T"))
        two(secondOfDay / 3600, &out)
        out.append(UInt8(ascii: ":"))
        two(secondOfDay / 60 % 60, &out)
        out.append(UInt8(ascii: ":"))
        two(secondOfDay % 60, &out)
        out.append(UInt8(ascii: "."))
        two(micros / 10_000, &out)
        two(micros / 100 % 100, &out)
        two(micros % 100, &out)
        out.append(UInt8(ascii: "Z"))
    }
}

extension Int64 {
    /// Division rounding toward negative infinity, with a non-negative remainder.
    public func floorDivided(by divisor: Int64) -> (quotient: Int64, remainder: Int64) {
        var q = self / divisor
        var r = self % divisor
        if r < 0 {
            q -= 1
            r += divisor
        }
        return (q, r)
    }
}

private func isLeap(_ y: Int64) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

private func daysInMonth(year: Int64, month: Int64) -> Int64 {
    switch month {
    case 2: return isLeap(year) ? 29 : 28
    case 4, 6, 9, 11: return 30
    default: return 31
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
private func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
    let y = month <= 2 ? year - 1 : year
    let era = (y >= 0 ? y : y - 399) / 400
    let yoe = y - era * 400
    let mp = (month + 9) % 12
    let doy = (153 * mp + 2) / 5 + day - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    return era * 146_097 + doe - 719_468
}

private func civilFromDays(_ days: Int64) -> (Int64, Int64, Int64) {
    let z = days + 719_468
    let era = (z >= 0 ? z : z - 146_096) / 146_097
    let doe = z - era * 146_097
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let d = doy - (153 * mp + 2) / 5 + 1
    let m = mp < 10 ? mp + 3 : mp - 9
    return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
}

/// A value quoted for an error message, cut short so that a huge input cannot flood a response.
func quoted(_ text: String, limit: Int = 64) -> String {
    var out = "\""
    var count = 0
    for scalar in text.unicodeScalars {
        if count == limit {
            out += "…"
            break
        }
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20 || scalar.value == 0x7F:
            out += "\\u" + String(scalar.value, radix: 16).leftPadded(to: 4)
        default: out.unicodeScalars.append(scalar)
        }
        count += 1
    }
    return out + "\""
}

extension String {
    func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
