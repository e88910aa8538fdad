/// RFC 4648 base64 with padding, the encoding of `bytes` in JSON.
///
/// Written here (not through Foundation's `Data`) because raw frames are decoded on the ingest hot
/// path: straight into `[UInt8]`, in one pass, strictly (no whitespace, no missing padding).
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (k, c) in alphabet.enumerated() { table[Int(c)] = UInt8(k) }
        return table
    }()

    /// The URL and filename safe alphabet (RFC 4648 section 5), for tokens such as cursors.
    private static let urlAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let urlValues: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (k, c) in urlAlphabet.enumerated() { table[Int(c)] = UInt8(k) }
        return table
    }()

    public static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        encode(bytes, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the encoding of `bytes` to `out`.
    public static func encode(_ bytes: [UInt8], into out: inout [UInt8]) {
        encode(bytes, into: &out, alphabet: alphabet)
    }

    /// The length of the encoding of `count` bytes.
    public static func encodedLength(_ count: Int) -> Int { (count + 2) / 3 * 4 }

    /// Appends the encoding of `bytes` to `out`, which has room for ``encodedLength(_:)``.
    public static func encode(_ bytes: [UInt8], to out: inout OutputSpan<UInt8>) {
        encode(bytes, to: &out, alphabet: alphabet)
    }

    /// `bytes` in the URL-safe alphabet without padding.
    public static func encodeURL(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        encode(bytes, into: &out, alphabet: urlAlphabet)
        while out.last == UInt8(ascii: "=") { out.removeLast() }
        return String(decoding: out, as: UTF8.self)
    }

    /// The decoded bytes of unpadded URL-safe base64, or nil for anything else.
    public static func decodeURL(_ text: String) -> [UInt8]? {
        var padded = Array(text.utf8)
        guard padded.count % 4 != 1, !padded.contains(UInt8(ascii: "=")) else { return nil }
        padded += repeatElement(UInt8(ascii: "="), count: (4 - padded.count % 4) % 4)
        return padded.withUnsafeBufferPointer { decode($0, values: urlValues) }
    }

    private static func encode(_ bytes: [UInt8], into out: inout [UInt8], alphabet: [UInt8]) {
        out.append(atMost: encodedLength(bytes.count)) { encode(bytes, to: &$0, alphabet: alphabet) }
    }

    private static func encode(_ bytes: [UInt8], to out: inout OutputSpan<UInt8>, alphabet: [UInt8]) {
        alphabet.withUnsafeBufferPointer { alphabet in
            var k = 0
            while k + 3 <= bytes.count {
                let n = UInt32(bytes[k]) << 16 | UInt32(bytes[k + 1]) << 8 | UInt32(bytes[k + 2])
                out.append(alphabet[Int(n >> 18 & 63)])
                out.append(alphabet[Int(n >> 12 & 63)])
                out.append(alphabet[Int(n >> 6 & 63)])
                out.append(alphabet[Int(n & 63)])
                k += 3
            }
            let rest = bytes.count - k
            if rest > 0 {
                let n = UInt32(bytes[k]) << 16 | (rest == 2 ? UInt32(bytes[k + 1]) << 8 : 0)
                out.append(alphabet[Int(n >> 18 & 63)])
                out.append(alphabet[Int(n >> 12 & 63)])
                out.append(rest == 2 ? alphabet[Int(n >> 6 & 63)] : UInt8(ascii: "="))
                out.append(UInt8(ascii: "="))
            }
        }
    }

    /// The decoded bytes, or nil for anything but padded base64 of the standard alphabet.
    public static func decode(_ text: String) -> [UInt8]? {
        var text = text
        return text.withUTF8 { decode($0) }
    }

    public static func decode(_ s: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        decode(s, values: values)
    }

    private static func decode(_ s: UnsafeBufferPointer<UInt8>, values: [UInt8]) -> [UInt8]? {
        guard s.count % 4 == 0 else { return nil }
        if s.isEmpty { return [] }
        var padding = 0
        if s[s.count - 1] == UInt8(ascii: "=") {
            padding = s[s.count - 2] == UInt8(ascii: "=") ? 2 : 1
        }
        var out = [UInt8]()
        out.reserveCapacity(s.count / 4 * 3)
        var k = 0
        while k < s.count {
            let last = k + 4 == s.count
            let a = values[Int(s[k])], b = values[Int(s[k + 1])]
            let c = last && padding == 2 ? 0 : values[Int(s[k + 2])]
            let d = last && padding >= 1 ? 0 : values[Int(s[k + 3])]
            guard (a | b | c | d) & 0xC0 == 0 else { return nil }
            let n = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
            out.append(UInt8(truncatingIfNeeded: n >> 16))
            if !(last && padding == 2) { out.append(UInt8(truncatingIfNeeded: n >> 8)) }
            if !(last && padding >= 1) { out.append(UInt8(truncatingIfNeeded: n)) }
            k += 4
        }
        return out
    }
}
