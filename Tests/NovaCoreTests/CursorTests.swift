import NovaCore
import Testing

@Suite struct CursorTests {
    let query = EventQuery(scopeId: "séance", range: Timestamp.min..<Timestamp.max, lanes: [.raw, .ui], filters: [.raw: "uart0"])
    let key = OrderingKey(
        time: Timestamp(microseconds: 1_780_000_000_123_456), lane: .raw, connectionId: "uart0/é", sequence: -7,
        eventId: EventID(hex: String(repeating: "ab", count: 32))!)

    @Test func roundTrips() throws {
        let text = Cursor.encode(key, for: query)
        #expect(try Cursor.decode(text, for: query) == key)
        #expect(text.utf8.allSatisfy { $0 != UInt8(ascii: "+") && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: "=") })
    }

    @Test func foreignCursorIsRejected() throws {
        let text = Cursor.encode(key, for: query)
        for other in [
            EventQuery(scopeId: "other", range: query.range, lanes: query.lanes, filters: query.filters),
            EventQuery(scopeId: query.scopeId, range: query.range, timebase: .source, lanes: query.lanes, filters: query.filters),
            EventQuery(scopeId: query.scopeId, range: query.range, lanes: [.raw], filters: query.filters),
            EventQuery(scopeId: query.scopeId, range: query.range, lanes: query.lanes),
        ] {
            #expect(throws: Cursor.DecodingError.self) { try Cursor.decode(text, for: other) }
        }
        // The range and the page size may change between pages.
        let wider = EventQuery(scopeId: query.scopeId, range: Timestamp.min..<key.time, lanes: query.lanes, filters: query.filters, limit: 3)
        #expect(try Cursor.decode(text, for: wider) == key)
    }

    @Test func forgedOrGarbledCursorsAreRejected() throws {
        let text = Cursor.encode(key, for: query)
        var flipped = Array(text.utf8)
        flipped[20] = flipped[20] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        for bad in ["", "x", "not a cursor!", String(text.dropLast(3)), String(decoding: flipped, as: UTF8.self), text + "AA",
                    String(repeating: "A", count: 5000), "'; DROP TABLE rawEvents; --"] {
            #expect(throws: Cursor.DecodingError.self) { try Cursor.decode(bad, for: query) }
        }
    }
}
