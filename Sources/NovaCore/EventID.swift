import Crypto

/// SHA-256 of an event's canonical pre-image: 32 bytes, shown as 64 lowercase hex digits.
///
/// Held as four big-endian words so that comparing the tuple compares the bytes, which is the
/// contract's order for ids (the same as comparing lowercase hex).
public struct EventID: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var w0: UInt64
    public var w1: UInt64
    public var w2: UInt64
    public var w3: UInt64

    public init(w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64) {
        (self.w0, self.w1, self.w2, self.w3) = (w0, w1, w2, w3)
    }

    /// From exactly 32 bytes; nil otherwise.
    public init?(bytes: UnsafeRawBufferPointer) {
        guard bytes.count == 32 else { return nil }
        func word(_ k: Int) -> UInt64 { UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: k * 8, as: UInt64.self)) }
        self.init(w0: word(0), w1: word(1), w2: word(2), w3: word(3))
    }

    /// From exactly 32 bytes; nil otherwise.
    public init?(bytes: some Collection<UInt8>) {
        guard let id = Array(bytes).withUnsafeBytes({ EventID(bytes: $0) }) else { return nil }
        self = id
    }

    /// From 64 hex digits (either case); nil otherwise.
    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 64 else { return nil }
        var words: [UInt64] = [0, 0, 0, 0]
        for (k, c) in utf8.enumerated() {
            let d: UInt64
            switch c {
            case 48...57: d = UInt64(c - 48)
            case 97...102: d = UInt64(c - 87)
            case 65...70: d = UInt64(c - 55)
            default: return nil
            }
            words[k / 16] = words[k / 16] << 4 | d
        }
        self.init(w0: words[0], w1: words[1], w2: words[2], w3: words[3])
    }

    /// SHA-256 of `preimage`.
    public init(hashing preimage: [UInt8]) {
        let digest = SHA256.hash(data: preimage)
        self = digest.withUnsafeBytes { EventID(bytes: $0)! }
    }

    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// The 32 bytes, big-endian, without allocating.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var words = (w0.bigEndian, w1.bigEndian, w2.bigEndian, w3.bigEndian)
        return try Swift.withUnsafeBytes(of: &words) { try body($0) }
    }

    public var hex: String {
        var out = [UInt8]()
        out.reserveCapacity(64)
        writeHex(into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the 64 lowercase hex digits to `out`.
    public func writeHex(into out: inout [UInt8]) {
        out.append(atMost: 64) { writeHex(to: &$0) }
    }

    /// Appends the 64 lowercase hex digits to `out`.
    public func writeHex(to out: inout OutputSpan<UInt8>) {
        func put(_ word: UInt64, _ out: inout OutputSpan<UInt8>) {
            let digits: StaticString = "0123456789abcdef"
            for nibble in 0..<16 {
                out.append(digits.utf8Start[Int(word >> UInt64(60 - 4 * nibble) & 15)])
            }
        }
        put(w0, &out)
        put(w1, &out)
        put(w2, &out)
        put(w3, &out)
    }

    public var description: String { hex }

    public static func < (a: EventID, b: EventID) -> Bool {
        (a.w0, a.w1, a.w2, a.w3) < (b.w0, b.w1, b.w2, b.w3)
    }

    /// XOR of two ids: the bucket digest of sync.md is the XOR of the ids in a bucket.
    public static func ^ (a: EventID, b: EventID) -> EventID {
        EventID(w0: a.w0 ^ b.w0, w1: a.w1 ^ b.w1, w2: a.w2 ^ b.w2, w3: a.w3 ^ b.w3)
    }

    public static let zero = EventID(w0: 0, w1: 0, w2: 0, w3: 0)
}
