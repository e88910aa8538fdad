/// RFC 8785 (JCS) canonical JSON: the form of `payload` that enters an event's id and that the
/// stores keep, so that any implementation computes the same id from the same content.
public enum CanonicalJSON {
    /// Serializes `value` canonically: keys sorted by UTF-16 code units, no whitespace, ECMAScript
    /// number formatting, minimal string escaping.
    public static func serialize(_ value: JSONValue) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        write(value, into: &out)
        return out
    }

    public static func write(_ value: JSONValue, into out: inout [UInt8]) {
        switch value {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .number(let n): writeNumber(n.double, into: &out)
        case .string(let s): writeString(s, into: &out)
        case .array(let elements):
            out.append(UInt8(ascii: "["))
            for (k, element) in elements.enumerated() {
                if k > 0 { out.append(UInt8(ascii: ",")) }
                write(element, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            let sorted = members.count < 2 ? members : members.sorted { a, b in
                a.key.utf16.lexicographicallyPrecedes(b.key.utf16)
            }
            for (k, member) in sorted.enumerated() {
                if k > 0 { out.append(UInt8(ascii: ",")) }
                writeString(member.key, into: &out)
                out.append(UInt8(ascii: ":"))
                write(member.value, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// JCS string escaping: only `"`, `\` and C0 controls are escaped; everything else is literal
    /// UTF-8, including U+2028 and DEL.
    public static func writeString(_ s: String, into out: inout [UInt8]) {
        out.append(atMost: stringCapacity(s)) { writeString(s, to: &$0) }
    }

    /// The most bytes ``writeString(_:to:)`` writes for `s`: quotes, and each byte as `\u00XX`.
    public static func stringCapacity(_ s: String) -> Int { 2 + 6 * s.utf8.count }

    /// Appends `s` as a JSON string to `out`, which has room for ``stringCapacity(_:)``.
    public static func writeString(_ s: String, to out: inout OutputSpan<UInt8>) {
        out.append(UInt8(ascii: "\""))
        for byte in s.utf8 {
            switch byte {
            case 0x22: out.append(0x5C); out.append(0x22)
            case 0x5C: out.append(0x5C); out.append(0x5C)
            case 0x08: out.append(0x5C); out.append(UInt8(ascii: "b"))
            case 0x09: out.append(0x5C); out.append(UInt8(ascii: "t"))
            case 0x0A: out.append(0x5C); out.append(UInt8(ascii: "n"))
            case 0x0C: out.append(0x5C); out.append(UInt8(ascii: "f"))
            case 0x0D: out.append(0x5C); out.append(UInt8(ascii: "r"))
            case 0..<0x20:
                out.append("\\u00")
                out.append(hexDigits[Int(byte >> 4)])
                out.append(hexDigits[Int(byte & 15)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// ECMAScript `Number.prototype.toString` for a finite double (ECMA-262, Number::toString),
    /// built on Swift's shortest round-trip digits, which pick the same closest digit string.
    public static func writeNumber(_ value: Double, into out: inout [UInt8]) {
        precondition(value.isFinite, "JSON numbers are finite")
        if value == 0 {
            out.append(UInt8(ascii: "0"))
            return
        }
        if value < 0 { out.append(UInt8(ascii: "-")) }
        // Decompose Swift's description ("1.25e-09", "408.0", "1e+21") into digits and exponent n,
        // with value = 0.d1d2...dk × 10^n.
        var digits: [UInt8] = []
        var pointPosition: Int?
        var exponent = 0
        var exponentSign = 1
        var inExponent = false
        for c in value.magnitude.description.utf8 {
            if inExponent {
                if c == UInt8(ascii: "-") { exponentSign = -1 } else if c != UInt8(ascii: "+") { exponent = exponent * 10 + Int(c - 48) }
            } else if c == UInt8(ascii: ".") {
                pointPosition = digits.count
            } else if c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
                inExponent = true
            } else {
                digits.append(c)
            }
        }
        var n = (pointPosition ?? digits.count) + exponentSign * exponent
        while let first = digits.first, first == UInt8(ascii: "0") {
            digits.removeFirst()
            n -= 1
        }
        while let last = digits.last, last == UInt8(ascii: "0") { digits.removeLast() }
        let k = digits.count
        if k <= n, n <= 21 {
            out.append(contentsOf: digits)
            out.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: n - k))
        } else if 0 < n, n <= 21 {
            out.append(contentsOf: digits[0..<n])
            out.append(UInt8(ascii: "."))
            out.append(contentsOf: digits[n...])
        } else if -6 < n, n <= 0 {
            out.append(contentsOf: "0.".utf8)
            out.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: -n))
            out.append(contentsOf: digits)
        } else {
            out.append(digits[0])
            if k > 1 {
                out.append(UInt8(ascii: "."))
                out.append(contentsOf: digits[1...])
            }
            out.append(UInt8(ascii: "e"))
            out.append(UInt8(ascii: n - 1 < 0 ? "-" : "+"))
            out.append(contentsOf: String((n - 1).magnitude).utf8)
        }
    }
}
