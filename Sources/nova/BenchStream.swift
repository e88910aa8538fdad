import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NovaCore
import NovaPostgres
import NovaSQLite
import Synchronization

/// `nova bench stream`: LIVE delivery latency under a steady ingest to many WebSocket clients,
/// and REWIND throughput at speed 0 beside a bare ordered read of the same store.
struct BenchStream: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stream",
        abstract: "LIVE latency to concurrent WebSocket clients under ingest; REWIND speed vs a bare ordered read.",
        discussion: """
            LIVE: --clients WebSocket clients follow a fresh store while --rate raw frames per \
            second are posted for --seconds seconds; for every batch and client, the time from \
            the batch's HTTP acknowledgement to the client holding all of its events (0 when \
            delivery came first). Every client must receive every event exactly once. REWIND: \
            --events frames are loaded, then one client rewinds them at speed 0; the baseline \
            reads the same range in the same order through GRDB or postgres-nio directly. Every \
            tenth rewound event's id is checked against the expected order. Exits 1 on any error.
            """
    )

    @Option(help: "Events to load for the rewind.") var events = 1_000_000
    @Option(help: "Devices (connections).") var devices = 500
    @Option(help: "LIVE ingest rate, events per second.") var rate = 50_000
    @Option(help: "LIVE seconds of ingest.") var seconds = 10
    @Option(help: "LIVE WebSocket clients.") var clients = 20
    @Option(help: "Events per ingest batch.") var batch = 2_500
    @Option(help: "sqlite, or a postgres://USER@HOST:PORT/DB server where a temporary database is created and dropped.")
    var store = "sqlite"
    @OptionGroup var options: BenchOptions

    func run() async throws {
        try options.checkBuild()
        guard rate > 0, seconds > 0, clients > 0, batch > 0, events > 0 else { throw ValidationError("--rate, --seconds, --clients, --batch, --events: positive") }
        let work = try benchWorkDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let logger = toolLogger()
        let benchStore = try await BenchStore(store, directory: work, logger: logger)
        defer { benchStore.drop() }
        let database = benchStore.database
        let sqlitePath = benchStore.sqlitePath
        let childDatabase = benchStore.childConfiguration
        var errors = [String]()
        var checks = [String]()
        var groups = [BenchGroup]()

        // LIVE, on an empty store.
        var child = try await RecorderChild(directory: work, database: childDatabase)
        try await child.waitUntilReady()
        let live: (delivery: BenchFigure, ack: BenchFigure, events: Int, errors: [String], note: String)
        do {
            live = try await measureLive(base: child.base, port: child.port)
        } catch {
            // The child must not outlive a benchmark that gives up.
            await child.stop()
            throw error
        }
        errors += live.errors
        if live.errors.isEmpty {
            checks.append("LIVE: each of \(clients) clients received all \(live.events) events once (counted per event)")
        }
        if !live.note.isEmpty { checks.append(live.note) }
        groups.append(BenchGroup("LIVE: \(rate) events/s for \(seconds) s to \(clients) WebSocket clients", figure: live.delivery, baselines: [live.ack]))
        var rss = peakRSS(pid: child.pid)
        await child.stop()

        // REWIND: load straight into a fresh store, then stream it back.
        let rewindFrames = DeviceFrames(devices: devices, start: Timestamp(microseconds: 1_790_000_000_000_000))
        let generated = rewindFrames.make(events)
        try await benchStore.load(events) { Array(generated[$0]) }
        child = try await RecorderChild(directory: work, database: childDatabase)
        try await child.waitUntilReady()
        let from = generated[0].canonicalTruthTime
        let to = Timestamp(microseconds: generated[events - 1].canonicalTruthTime.microseconds + 1)
        let rewind = try await measureRewind(port: child.port, from: from, to: to, expected: generated)
        errors += rewind.errors
        if rewind.errors.isEmpty { checks.append("REWIND: \(events) events counted, every tenth id checked against the contract order, then `end`") }
        rss = max(rss ?? 0, peakRSS(pid: child.pid) ?? 0)
        await child.stop()
        let bare: BenchFigure
        let started = ContinuousClock.now
        var read = 0
        if let database {
            let pg = PostgresBareQuery(location: database, connections: 1, logger: logger)
            while read < events {
                read += try await pg.count(LaneRead(lane: .raw, scopeId: DeviceFrames.scope, timebase: .canonical, from: generated[read].canonicalTruthTime, to: to, limit: 10_000))
            }
            pg.close()
            bare = .throughput("baseline: ordered read in pages of 10,000, bare postgres-nio", events: read, time: ContinuousClock.now - started)
        } else {
            let sqlite = try SQLiteBareQuery(path: sqlitePath)
            while read < events {
                read += try await sqlite.count(LaneRead(lane: .raw, scopeId: DeviceFrames.scope, timebase: .canonical, from: generated[read].canonicalTruthTime, to: to, limit: 10_000))
            }
            try sqlite.close()
            bare = .throughput("baseline: ordered read in pages of 10,000, bare GRDB", events: read, time: ContinuousClock.now - started)
        }
        groups.append(BenchGroup("REWIND at speed 0 of \(events) events to one WebSocket client", figure: rewind.figure, baselines: [bare]))

        let report = BenchReport(
            benchmark: database == nil ? "stream" : "stream-postgres", store: await benchStore.describe(), groups: groups, peakRSSBytes: rss, checks: checks, errors: errors)
        report.printTable()
        if let json = options.json { try report.write(to: json) }
        if !errors.isEmpty { throw ExitCode(1) }
    }

    /// Ingest at `rate` while `clients` LIVE clients count what they receive, per batch.
    private func measureLive(base: String, port: Int) async throws -> (delivery: BenchFigure, ack: BenchFigure, events: Int, errors: [String], note: String) {
        let batch = batch
        let devices = devices
        let rate = rate
        let total = rate * seconds
        let batches = (total + batch - 1) / batch
        let frames = DeviceFrames(devices: devices).make(total)
        let bodies = (0..<batches).map { b in
            var out = [UInt8]()
            for event in frames[(b * batch)..<min(total, (b + 1) * batch)] { DeviceFrames.writeIngestLine(event, into: &out) }
            return ByteBuffer(bytes: out)
        }
        let acks = Shared([ContinuousClock.Instant?](repeating: nil, count: batches))
        let ready = Shared(0)
        // A client that ends before the ingest starts (refused, or over the server's
        // maxStreamsPerToken) would otherwise leave the wait below waiting for it forever.
        let early = Shared<String?>(nil)
        let clients = clients
        let clientResults = Task {
            try await withThrowingTaskGroup(of: BenchStreamClient.LiveCounter.Outcome.self) { group in
                for _ in 0..<clients {
                    group.addTask {
                        do {
                            let outcome = try await BenchStreamClient.run(port: port, path: "/v1/stream?scope=\(DeviceFrames.scope)&mode=live") {
                                BenchStreamClient.LiveCounter(total: total, batch: batch, devices: devices) { ready.withLock { $0 += 1 } }
                            }
                            if let failure = outcome.failure { early.withLock { $0 = $0 ?? failure } }
                            return outcome
                        } catch {
                            early.withLock { $0 = $0 ?? "\(error)" }
                            throw error
                        }
                    }
                }
                var all = [BenchStreamClient.LiveCounter.Outcome]()
                for try await outcome in group { all.append(outcome) }
                return all
            }
        }
        let readyBy = ContinuousClock.now + .seconds(60)
        while ready.withLock({ $0 }) < clients {
            if let failure = early.withLock({ $0 }) {
                clientResults.cancel()
                throw CLIError("LIVE: a WebSocket client ended before the ingest began: \(failure)")
            }
            if ContinuousClock.now > readyBy {
                clientResults.cancel()
                throw CLIError("LIVE: \(clients - ready.withLock { $0 }) of \(clients) WebSocket clients got no caughtUp within 60 s")
            }
            try await Task.sleep(for: .milliseconds(20))
        }

        // Paced posting: batch b is due at start + b × batch / rate, from a few concurrent writers.
        let progress = Progress("LIVE ingest", total: total)
        let (ackSamples, postErrors, ingestWall) = try await withHTTPClient { http in
            try await postPaced(bodies, to: base, batch: batch, rate: rate, progress: progress, http: http) { b, acked in
                acks.withLock { $0[b] = acked }
            }
        }
        var errors = postErrors
        let results = try await withThrowingTaskGroup(of: [BenchStreamClient.LiveCounter.Outcome]?.self) { group in
            group.addTask { try await clientResults.value }
            group.addTask {
                try await Task.sleep(for: .seconds(60))
                // Awaiting a task's value ignores cancellation: end the clients themselves.
                clientResults.cancel()
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
        guard let results else {
            clientResults.cancel()
            return (.latency("LIVE delivery", samples: [], wall: ingestWall, events: 0), .latency("ingest", samples: ackSamples, wall: ingestWall, events: total),
                    total, errors + ["clients did not receive everything within 60 s of the last acknowledgement"], "")
        }
        let ackTimes = acks.withLock { $0 }
        var delivery = [Double]()
        for outcome in results {
            if let failure = outcome.failure { errors.append(failure) }
            for (b, done) in outcome.complete.enumerated() {
                guard let done, let acked = ackTimes[b] else { continue }
                delivery.append(max(0, (done - acked).seconds))
            }
        }
        // Falling short of the rate is a finding about the machine, not a wrong answer: it is
        // reported with the figures, and the latencies are then those of a saturated recorder.
        let reached = Double(total) / ingestWall.seconds
        let note = String(format: "LIVE ingest reached %.0f of the asked %d events/s%@", reached, rate, reached < Double(rate) * 0.9 ? " (saturated)" : "")
        return (
            .latency("nova LIVE: batch acknowledged → all its events at a client", samples: delivery, wall: ingestWall, events: total * clients),
            .latency("context: the HTTP ingest acknowledgement itself (send → ack)", samples: ackSamples, wall: ingestWall, events: total),
            total, errors, note
        )
    }

    /// One client rewinds [from, to) at speed 0 and checks count and order.
    private func measureRewind(port: Int, from: Timestamp, to: Timestamp, expected: [Event]) async throws -> (figure: BenchFigure, errors: [String]) {
        let progress = Progress("REWIND", total: expected.count)
        let ids = expected.map(\.eventId)
        let started = ContinuousClock.now
        let outcome = try await BenchStreamClient.run(
            port: port, path: "/v1/stream?scope=\(DeviceFrames.scope)&mode=rewind&from=\(from.rfc3339)&to=\(to.rfc3339)&speed=0"
        ) { BenchStreamClient.RewindChecker(expected: ids, progress: progress) }
        let elapsed = ContinuousClock.now - started
        let (count, ended, failure) = (outcome.count, outcome.ended, outcome.failure)
        var errors = [String]()
        if let failure { errors.append(failure) }
        if !ended { errors.append("the rewind did not end with `end`") }
        if count != expected.count { errors.append("rewound \(count) of \(expected.count) events") }
        return (.throughput("nova REWIND speed 0 over WebSocket, one client", events: count, time: elapsed), errors)
    }

    /// A value shared by the benchmark's tasks.
    final class Shared<Value: Sendable>: Sendable {
        private let value: Mutex<Value>
        init(_ value: Value) { self.value = Mutex(value) }
        func withLock<R>(_ body: (inout Value) -> R) -> R { value.withLock { body(&$0) } }
    }

}

/// Byte-level reading of stream frames for the benchmark's clients. They read every frame of up to
/// 20 streams on the same two cores as the server, so they must cost little beside it: generic
/// `firstRange(of:)` on a `ByteBufferView` and an array per marker per frame made the clients
/// take most of the machine (perf: about 84% of all samples during LIVE, the server about 10%),
/// and later a `memcmp` at every quote of a message still took a tenth of it.
enum FrameScan {
    static let caughtUp = Array(#"{"type":"caughtUp""#.utf8)
    static let event = Array(#"{"type":"event""#.utf8)
    static let end = Array(#"{"type":"end"}"#.utf8)
    static let error = Array(#"{"type":"error""#.utf8)
    static let device = Array(#""connectionId":"dev-"#.utf8)
    /// What follows the device number in a raw event (`Event.writeJSON`'s field order).
    static let sequence = Array(#"","sequence":"#.utf8)

    static func starts(_ raw: UnsafeRawBufferPointer, with prefix: [UInt8], at offset: Int = 0) -> Bool {
        guard offset >= 0, raw.count - offset >= prefix.count, let base = raw.baseAddress else { return false }
        return prefix.withUnsafeBytes { memcmp($0.baseAddress!, base + offset, prefix.count) == 0 }
    }

    /// The offset just after the first occurrence of `needle`. Candidates are found by the
    /// needle's byte at `anchor` with `memchr`; an anchor that is rare in messages (the `I` of a
    /// key ending in `Id`, say) leaves few to compare.
    static func find(_ raw: UnsafeRawBufferPointer, _ needle: [UInt8], anchor: Int) -> Int? {
        guard let base = raw.baseAddress, raw.count >= needle.count else { return nil }
        let byte = Int32(needle[anchor])
        var from = 0
        while from <= raw.count - needle.count {
            guard let hit = memchr(base + from + anchor, byte, raw.count - needle.count - from + 1) else { return nil }
            let at = base.distance(to: UnsafeRawPointer(hit)) - anchor
            if starts(raw, with: needle, at: at) { return at + needle.count }
            from = at + 1
        }
        return nil
    }

    /// The decimal number at `offset`, and the offset after it.
    static func number(_ raw: UnsafeRawBufferPointer, at offset: Int) -> (value: Int, end: Int)? {
        var i = offset
        var value = 0
        while i < raw.count, raw[i] >= 48, raw[i] <= 57 {
            value = value * 10 + Int(raw[i] - 48)
            i += 1
        }
        return i > offset ? (value, i) : nil
    }

    /// The index of a `DeviceFrames` event from its message: `sequence × devices + device`.
    static func frameIndex(_ raw: UnsafeRawBufferPointer, devices: Int) -> Int? {
        guard let at = find(raw, device, anchor: 11), let (device, end) = number(raw, at: at),
              starts(raw, with: sequence, at: end), let (tick, _) = number(raw, at: end + sequence.count)
        else { return nil }
        return tick * devices + device
    }
}
