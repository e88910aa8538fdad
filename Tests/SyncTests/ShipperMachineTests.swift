import NovaCore
import NovaSync
import Testing

/// The shipper's decisions, without sockets: every path of sync.md's protocol steps 1 to 4.
@Suite struct ShipperMachineTests {
    let idA = EventID(w0: 1, w1: 2, w2: 3, w3: 4)
    let idB = EventID(w0: 9, w1: 9, w2: 9, w3: 9)

    @Test func startsByAskingTheHubThenShipsFromItsWatermark() {
        var m = ShipperMachine()
        #expect(m.start() == .fetchWatermark)
        #expect(m.next(lastSeq: 10, heartbeatDue: false) == .fetchWatermark, "never ships on a guess")
        let a = m.watermark(SyncWatermark(ackedSeq: 4, lastEventId: idA), lastSeq: 10, idAtWatermark: idA, heartbeatDue: false)
        #expect(a == .ship(after: 4))
        #expect(m.ackedSeq == 4)
        #expect(m.upstreamReachable)
        #expect(m.shipped(.acknowledged(SyncWatermark(ackedSeq: 8, lastEventId: nil)), lastSeq: 10, random: 0) == .ship(after: 8))
        #expect(m.shipped(.acknowledged(SyncWatermark(ackedSeq: 10, lastEventId: nil)), lastSeq: 10, random: 0) == .idle(after: 10))
        #expect(m.next(lastSeq: 10, heartbeatDue: true) == .heartbeat(ackedSeq: 10))
        #expect(m.next(lastSeq: 11, heartbeatDue: true) == .ship(after: 10), "events before heartbeats")
    }

    @Test func aGapSendsItBackToTheHubsWatermark() {
        var m = ShipperMachine()
        _ = m.start()
        _ = m.watermark(SyncWatermark(ackedSeq: 0, lastEventId: nil), lastSeq: 50, idAtWatermark: nil, heartbeatDue: false)
        #expect(m.shipped(.gap(SyncWatermark(ackedSeq: 0, lastEventId: nil)), lastSeq: 50, random: 0) == .fetchWatermark)
        #expect(m.ackedSeq == nil)
        #expect(m.failures == 0, "a gap is not a failure")
    }

    @Test func failuresBackOffExponentiallyWithJitterUpToTheCap() {
        var m = ShipperMachine(maxBackoff: .seconds(4), baseBackoff: .milliseconds(250))
        _ = m.start()
        _ = m.watermark(SyncWatermark(ackedSeq: 0, lastEventId: nil), lastSeq: 5, idAtWatermark: nil, heartbeatDue: false)
        var delays = [Duration]()
        for _ in 0..<8 {
            guard case .sleep(let d) = m.shipped(.unreachable("connection refused"), lastSeq: 5, random: 0.999_999) else {
                Issue.record("expected a back-off")
                return
            }
            delays.append(d)
            #expect(m.ackedSeq == nil, "after an error it asks the hub again")
            #expect(m.resume(lastSeq: 5, heartbeatDue: false) == .fetchWatermark)
        }
        #expect(delays.map { Int(($0 / .milliseconds(1)).rounded()) } == [250, 500, 1000, 2000, 4000, 4000, 4000, 4000])
        #expect(!m.upstreamReachable)
        #expect(m.lastError == "connection refused")
        // Jitter: the lowest draw halves the wait.
        guard case .sleep(let low) = m.shipped(.unreachable("x"), lastSeq: 5, random: 0) else { Issue.record("no back-off"); return }
        #expect(low == .seconds(2))
        // The hub answers again: failures and the error are cleared.
        _ = m.watermark(SyncWatermark(ackedSeq: 2, lastEventId: nil), lastSeq: 5, idAtWatermark: nil, heartbeatDue: false)
        #expect(m.failures == 0)
        #expect(m.lastError == nil)
        #expect(m.backoff == .zero)
    }

    @Test func overloadHonoursRetryAfterAndKeepsTheWatermark() {
        var m = ShipperMachine(maxBackoff: .seconds(30))
        _ = m.start()
        _ = m.watermark(SyncWatermark(ackedSeq: 7, lastEventId: nil), lastSeq: 20, idAtWatermark: nil, heartbeatDue: false)
        #expect(m.shipped(.overloaded(retryAfter: .seconds(3)), lastSeq: 20, random: 0) == .sleep(.seconds(3)))
        #expect(m.ackedSeq == 7)
        #expect(m.upstreamReachable)
        #expect(m.resume(lastSeq: 20, heartbeatDue: false) == .ship(after: 7))
    }

    @Test func aRefusalWaitsTheLongestBackOff() {
        var m = ShipperMachine(maxBackoff: .seconds(30))
        _ = m.start()
        _ = m.watermark(SyncWatermark(ackedSeq: 0, lastEventId: nil), lastSeq: 3, idAtWatermark: nil, heartbeatDue: false)
        #expect(m.shipped(.refused("403: this token ships for site b"), lastSeq: 3, random: 1) == .sleep(.seconds(30)))
        #expect(m.lastError == "403: this token ships for site b")
    }

    /// A wrong token shows first on the watermark request: refused there, it waits as long.
    @Test func aRefusedWatermarkRequestWaitsTheLongestBackOff() {
        var m = ShipperMachine(maxBackoff: .seconds(30))
        #expect(m.start() == .fetchWatermark)
        #expect(m.watermarkFailed("403: this token ships for site b", status: 403, random: 1) == .sleep(.seconds(30)))
        #expect(m.upstreamReachable)
        #expect(m.resume(lastSeq: 3, heartbeatDue: false) == .fetchWatermark)
        // Anything else backs off from the start as before: no answer, a 5xx, a 429.
        for status in [nil, 500, 503, 429] as [Int?] {
            var fresh = ShipperMachine(maxBackoff: .seconds(30))
            _ = fresh.start()
            #expect(fresh.watermarkFailed("failed", status: status, random: 1) == .sleep(.milliseconds(250)), "\(String(describing: status))")
            #expect(fresh.upstreamReachable == (status != nil))
        }
    }

    @Test func aBatchTooLargeForTheHubGoesAgainAtOnceInHalvesDownToOneEvent() {
        var m = ShipperMachine(maxBackoff: .seconds(30), maxBatchBytes: 8_000_000)
        _ = m.start()
        _ = m.watermark(SyncWatermark(ackedSeq: 0, lastEventId: nil), lastSeq: 40, idAtWatermark: nil, heartbeatDue: false)
        // Under the configured cap, yet over the hub's limit: half of what was sent, no back-off.
        #expect(m.shipped(.tooLarge("413: body too large"), lastSeq: 40, random: 0, sent: (events: 40, bytes: 6_000_000)) == .fetchWatermark)
        #expect(m.batchBytes == 3_000_000)
        #expect(m.failures == 0)
        #expect(m.lastError?.contains("too large (413)") == true)
        #expect(m.watermark(SyncWatermark(ackedSeq: 0, lastEventId: nil), lastSeq: 40, idAtWatermark: nil, heartbeatDue: false) == .ship(after: 0))
        #expect(m.shipped(.tooLarge("413"), lastSeq: 40, random: 0, sent: (events: 20, bytes: 3_000_000)) == .fetchWatermark)
        #expect(m.batchBytes == 1_500_000)
        // One event over the hub's limit: halving cannot help; an operator must raise the limit.
        _ = m.watermark(SyncWatermark(ackedSeq: 0, lastEventId: nil), lastSeq: 40, idAtWatermark: nil, heartbeatDue: false)
        #expect(m.shipped(.tooLarge("413"), lastSeq: 40, random: 1, sent: (events: 1, bytes: 1_200_000)) == .sleep(.seconds(30)))
        #expect(m.batchBytes == 1_500_000)
        #expect(m.lastError?.contains("server.maxBodyBytes") == true)
    }

    @Test func aStoreThatIsNotTheOneTheHubAcknowledgedIsRenewed() {
        var m = ShipperMachine()
        _ = m.start()
        // The hub holds more of this storeId than the store has: a restored backup.
        guard case .renewIdentity = m.watermark(SyncWatermark(ackedSeq: 500, lastEventId: idA), lastSeq: 20, idAtWatermark: nil, heartbeatDue: false) else {
            Issue.record("expected a renewal")
            return
        }
        // The same position holds another event.
        guard case .renewIdentity = m.watermark(SyncWatermark(ackedSeq: 10, lastEventId: idA), lastSeq: 20, idAtWatermark: idB, heartbeatDue: false) else {
            Issue.record("expected a renewal")
            return
        }
        // Retention removed the event at the watermark: nothing to compare, ship on.
        #expect(m.watermark(SyncWatermark(ackedSeq: 10, lastEventId: idA), lastSeq: 20, idAtWatermark: nil, heartbeatDue: false) == .ship(after: 10))
    }
}
