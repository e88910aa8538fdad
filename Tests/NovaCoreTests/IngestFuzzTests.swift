import Foundation
import NovaCore
import NovaTestSupport
import Testing

/// A mutation fuzzer for the ingest parser and validator (`IngestBatch` over `EventDecoder`),
/// seeded with every event of the contract's vectors: bit flips, JSON-significant bytes, invalid
/// UTF-8, cut, doubled and spliced ranges, huge and odd numbers, deep nesting. For every body, in
/// both formats, it checks what must hold, not only that nothing crashed: a refusal names its
/// field and rule, every event is either accepted or rejected with its index, and an accepted
/// event serializes to a line that parses back to the same event.
///
/// The suite runs `NOVA_FUZZ_ITERATIONS` (default 20,000, about a second) bodies from a fresh seed, printed so that
/// a failure can be replayed with `NOVA_FUZZ_SEED`. A crash it finds becomes a case of
/// `IngestAPITests.hostileBodiesNeverCrashOrStore`.
@Suite struct IngestFuzzTests {
    static func corpus() throws -> [[UInt8]] {
        var seeds = [[UInt8]]()
        for name in ["event-ids.json", "invalid-events.json"] {
            guard case .array(let cases) = try JSONParser.parse(String(contentsOf: Fixtures.vectorURL(name), encoding: .utf8)) else { continue }
            for c in cases {
                if let event = c["event"] { seeds.append(CanonicalJSON.serialize(event)) }
            }
        }
        return seeds
    }

    static let interesting: [UInt8] = Array(#"{}[]:,"\0-+.eE9 "#.utf8) + [0x00, 0x0A, 0x0D, 0x7F, 0x80, 0xBF, 0xC0, 0xC3, 0xE2, 0xED, 0xF0, 0xF5, 0xFF]
    static let fragments: [String] = [
        "1e999999", "-0", "123456789012345678901234567890", "0.0000001", "1E400", "-9223372036854775809", "9223372036854775808",
        #""\ud800""#, #""\u0000""#, #""\uDFFF\uD800""#, "null", "true", "[]", "{}", #""""#,
        String(repeating: "[", count: 600), String(repeating: "{\"a\":", count: 300), #""lane":"raw""#, #""sequence":-1"#,
        #""bytes":"=AA""#, #""sourceTruthTime":"2026-02-30T00:00:00Z""#, #""sourceTruthTime":"0000-01-01T00:00:00Z""#,
        #""canonicalTruthTime":"9999-12-31T23:59:60Z""#, #""payload":"#, #""eventId":"00""#, #""scopeId":"\#(String(repeating: "é", count: 200))""#,
    ]

    static func mutate(_ input: [UInt8], corpus: [[UInt8]], rng: inout SeededGenerator) -> [UInt8] {
        var out = input
        // Mostly one change, so that many mutants stay close to valid and reach the validator's
        // rules and the accepted path; sometimes several.
        let roll = Int.random(in: 0..<100, using: &rng)
        for _ in 0..<(roll < 60 ? 1 : roll < 85 ? 2 : 4) {
            let at = out.isEmpty ? 0 : Int.random(in: 0..<out.count, using: &rng)
            switch Int.random(in: 0..<9, using: &rng) {
            case 0 where !out.isEmpty: out[at] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
            case 1 where !out.isEmpty: out[at] = interesting.randomElement(using: &rng)!
            case 2: out.insert(contentsOf: (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }, at: at)
            case 3 where !out.isEmpty: out.removeSubrange(at..<min(out.count, at + Int.random(in: 1...16, using: &rng)))
            case 4 where !out.isEmpty:
                let end = min(out.count, at + Int.random(in: 1...32, using: &rng))
                out.insert(contentsOf: out[at..<end], at: end)
            case 5:
                let other = corpus.randomElement(using: &rng)!
                let cut = Int.random(in: 0...other.count, using: &rng)
                out = Array(out[..<at]) + other[cut...]
            case 6: out = Array(out[..<at])
            case 7: out.insert(contentsOf: Array(fragments.randomElement(using: &rng)!.utf8), at: at)
            default: out.insert(interesting.randomElement(using: &rng)!, at: at)
            }
        }
        return out
    }

    static func parse(_ body: [UInt8], _ format: IngestBatch.Format) -> Result<IngestBatch, EventValidationError> {
        body.withUnsafeBufferPointer { raw in
            Result { () throws(EventValidationError) in try IngestBatch(body: raw, format: format, decoder: EventDecoder(), receivedAt: Timestamp(microseconds: 1_780_000_000_000_000)) }
        }
    }

    @Test func mutatedBodiesAreAcceptedOrRefusedByTheRules() throws {
        let environment = ProcessInfo.processInfo.environment
        let iterations = environment["NOVA_FUZZ_ITERATIONS"].flatMap(Int.init) ?? 20_000
        let seed = environment["NOVA_FUZZ_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64(UInt32.max))
        var rng = SeededGenerator(seed: seed)
        let corpus = try Self.corpus()
        try #require(corpus.count >= 30)
        var (accepted, rejected, refused) = (0, 0, 0)
        for iteration in 0..<iterations {
            // A few mutants per body, as NDJSON lines and as one JSON array.
            let mutants = (0..<Int.random(in: 1...3, using: &rng)).map { _ in Self.mutate(corpus.randomElement(using: &rng)!, corpus: corpus, rng: &rng) }
            let ndjson = Array(mutants.joined(separator: [UInt8(ascii: "\n")]))
            let array = [UInt8(ascii: "[")] + Array(mutants.joined(separator: [UInt8(ascii: ",")])) + [UInt8(ascii: "]")]
            for (body, format) in [(ndjson, IngestBatch.Format.ndjson), (array, .jsonArray)] {
                let context = "iteration \(iteration) of seed \(seed), \(format): \(String(decoding: body.prefix(300), as: UTF8.self))"
                switch Self.parse(body, format) {
                case .failure(let error):
                    refused += 1
                    #expect(format == .jsonArray && error.field == "body" && !error.rule.isEmpty, "\(context): \(error)")
                case .success(let batch):
                    #expect(batch.events.count + batch.rejected.count == batch.count, "\(context)")
                    #expect((batch.indices + batch.rejected.map(\.index)).sorted() == Array(0..<batch.count), "\(context)")
                    for rejection in batch.rejected {
                        #expect(rejection.error.hasPrefix("events[\(rejection.index)]") && rejection.error.contains(": "), "\(context): \(rejection.error)")
                    }
                    rejected += batch.rejected.count
                    accepted += batch.events.count
                    for event in batch.events {
                        let line = Array(event.json.utf8)
                        guard case .success(let again) = Self.parse(line, .ndjson), again.events.count == 1 else {
                            Issue.record("\(context): an accepted event does not parse back: \(event.json)")
                            continue
                        }
                        #expect(again.events[0] == event, "\(context): \(event.json)")
                    }
                }
            }
        }
        print("ingest fuzz: \(iterations * 2) bodies (seed \(seed)): \(accepted) events accepted, \(rejected) rejected with a reason, \(refused) bodies refused whole")
        #expect(accepted > 0 && rejected > 0, "the mutants should exercise both outcomes")
    }
}
