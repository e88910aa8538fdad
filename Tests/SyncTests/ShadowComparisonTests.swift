import Foundation
import NovaCore
@testable import NovaSync
import NovaTestSupport
import Prometheus
import Testing

/// Dual mode's comparison on real stores (a SQLite primary, each backend as the shadow): each
/// comparison reads only the buckets not compared yet, so its cost follows the ingest rate; a
/// sweep reads the whole window and finds drift in buckets compared before; a bucket that
/// differed is compared again next time.
@Suite struct ShadowComparisonTests {
    static let minute: Int64 = 60_000_000

    static func frame(_ k: Int, at microseconds: Int64) -> Event {
        let t = Timestamp(microseconds: microseconds)
        return Event(scopeId: "s", sourceTruthTime: t, canonicalTruthTime: t, fields: .raw(connectionId: "c", sequence: Int64(k), bytes: [UInt8(k & 255)]))
    }

    @Test(arguments: Backend.allCases)
    func comparesWhatIsNewEachTimeAndTheWholeWindowInSweeps(shadowBackend: Backend) async throws {
        let (primary, cleanPrimary) = try await Backend.sqlite.makeStore()
        let (shadow, cleanShadow) = try await shadowBackend.makeStore()
        defer {
            Task {
                await cleanPrimary()
                await cleanShadow()
            }
        }
        let now = Timestamp.now().microseconds
        // 300 events over the five minutes that ended two minutes ago, in both stores.
        let events = (0..<300).map { k in Self.frame(k, at: now - 7 * Self.minute + Int64(k) * Self.minute / 60) }
        _ = try await primary.append(events)
        _ = try await shadow.append(events)
        var settings = ShadowWriter.Settings()
        settings.verifyWindow = .seconds(3600)
        settings.sweepEvery = .seconds(3600)
        let writer = ShadowWriter(primary: primary, shadow: shadow, settings: settings, registry: PrometheusCollectorRegistry(), logger: quietLogger)
        var head = try await primary.lastCommittedSeq()
        var progress = ShadowWriter.Progress()

        // The first comparison is a sweep of the window; the next has nothing new to read.
        #expect(try await writer.compare(after: head, progress: &progress) == .init(differing: 0, comparedEvents: 300))
        #expect(try await writer.compare(after: head, progress: &progress) == .init(differing: 0, comparedEvents: 0))

        // A late event in a compared bucket, in the primary only: the next incremental comparison
        // does not read that bucket; a sweep finds it and repairs the shadow.
        _ = try await primary.append([Self.frame(1000, at: now - 6 * Self.minute + 7)])
        head = try await primary.lastCommittedSeq()
        #expect(try await writer.compare(after: head, progress: &progress) == .init(differing: 0, comparedEvents: 0))
        progress.lastSweep = nil
        #expect(try await writer.compare(after: head, progress: &progress) == .init(differing: 1, comparedEvents: 301))

        // The bucket that differed is compared again (with those after it), now equal.
        let recheck = try await writer.compare(after: head, progress: &progress)
        #expect(recheck.differing == 0)
        #expect(recheck.comparedEvents > 0 && recheck.comparedEvents < 301, "from the repaired bucket on: \(recheck.comparedEvents)")
        #expect(try await writer.compare(after: head, progress: &progress) == .init(differing: 0, comparedEvents: 0))
    }
}
