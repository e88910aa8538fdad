import NovaCore
import Testing

@Suite struct TimestampTests {
    @Test(arguments: [
        ("2026-01-27T14:32:15.123456Z", "2026-01-27T14:32:15.123456Z"),
        ("2026-01-27T14:32:15.123456789Z", "2026-01-27T14:32:15.123456Z"),
        ("2026-01-27T14:32:15.1Z", "2026-01-27T14:32:15.100000Z"),
        ("2026-01-27T15:32:15+01:00", "2026-01-27T14:32:15.000000Z"),
        ("2026-01-27t14:32:15z", "2026-01-27T14:32:15.000000Z"),
        ("2026-01-01T00:30:00-01:00", "2026-01-01T01:30:00.000000Z"),
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000000Z"),
        ("9999-12-31T23:59:59.999999999Z", "9999-12-31T23:59:59.999999Z"),
        ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00.000000Z"),
        ("2000-02-29T12:00:00Z", "2000-02-29T12:00:00.000000Z"),
    ])
    func parsesAndNormalizes(input: String, expected: String) throws {
        #expect(try Timestamp(rfc3339: input).rfc3339 == expected)
    }

    @Test(arguments: [
        "27/01/2026 14:32", "2026-01-27T14:32:15", "2026-01-27 14:32:15Z", "2026-02-30T00:00:00Z", "2025-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z", "1969-12-31T23:59:59Z", "1970-01-01T00:30:00+01:00", "2026-01-27T24:00:00Z",
        "2026-01-27T14:32:60Z", "2026-01-27T14:32:15.Z", "2026-01-27T14:32:15.1234567890Z", "2026-01-27T14:32:15+1:00",
        "2026-13-01T00:00:00Z", "", "2026-01-27T14:32:15Z ", "10000-01-01T00:00:00Z", "2026-01-27T14:32:15+24:00",
    ])
    func rejects(input: String) {
        #expect(throws: TimestampError.self) { try Timestamp(rfc3339: input) }
    }

    /// Allowed by RFC 3339's grammar but not storable: refused with that reason, not as malformed.
    @Test func aLeapSecondIsRefusedAsSuch() {
        func reason(_ text: String) -> String {
            do {
                _ = try Timestamp(rfc3339: text)
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(reason("2016-12-31T23:59:60Z") == #"a leap second (second 60) cannot be stored; use the next second: "2016-12-31T23:59:60Z""#)
        #expect(reason("2016-12-31T23:59:60") == #"not an RFC 3339 timestamp: "2016-12-31T23:59:60""#)
    }

    @Test func roundTripsEveryDayAcrossCenturies() throws {
        var t = Timestamp.min.microseconds
        while t < Timestamp.max.microseconds {
            let ts = Timestamp(microseconds: t)
            #expect(try Timestamp(rfc3339: ts.rfc3339) == ts)
            t += 86_400_000_000 * 37 + 3_723_456_789
        }
    }
}
