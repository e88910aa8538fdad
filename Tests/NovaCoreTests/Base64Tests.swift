import Foundation
import NovaCore
import Testing

@Suite struct Base64Tests {
    @Test func roundTripsLikeFoundation() {
        var rng = SystemRandomNumberGenerator()
        for length in 0..<70 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let text = Base64.encode(bytes)
            #expect(text == Data(bytes).base64EncodedString())
            #expect(Base64.decode(text) == bytes)
        }
    }

    @Test(arguments: ["***", "AAE", "AA=C", "A===", "AAEC\n", " AAEC", "AA==AAAA", "AAE-", "AAE_"])
    func rejects(text: String) {
        #expect(Base64.decode(text) == nil)
    }

    /// The URL-safe form (cursors): Foundation's encoding with `+/` as `-_`, unpadded.
    @Test func urlFormRoundTripsLikeFoundation() {
        var rng = SystemRandomNumberGenerator()
        for length in 0..<70 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let text = Base64.encodeURL(bytes)
            let foundation = Data(bytes).base64EncodedString().map { $0 == "+" ? "-" : $0 == "/" ? "_" : $0 }.filter { $0 != "=" }
            #expect(text == String(foundation))
            #expect(Base64.decodeURL(text) == bytes)
        }
    }

    @Test(arguments: ["***", "A", "AAAAA", "AA=C", "AA==", "AAE+", "AAE/", "AAEC\n", " AAE"])
    func urlFormRejects(text: String) {
        #expect(Base64.decodeURL(text) == nil)
    }
}
