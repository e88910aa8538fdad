import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NovaCore
import NovaPostgres
import NovaSQLite

/// `nova bench ingest`: end-to-end HTTP ingest into a fresh recorder, beside the store's
/// plain-insert limit measured in the same run.
struct BenchIngest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "HTTP ingest (NDJSON batches) into a fresh SQLite recorder vs a plain prepared-statement insert loop.",
        discussion: """
            Generates raw frames of --devices devices at 10 Hz, posts them as NDJSON batches to a \
            `nova record` child process on a temporary store, then reads everything back and checks \
            count, order and ids. The baseline writes the same rows into a SQLite table with the same \
            two ordering indexes and no dedupe, one transaction per batch. Exits 1 on any error or \
            lost event.
            """
    )

    @Option(help: "Events to ingest.") var events = 1_000_000
    @Option(help: "Events per request.") var batch = 5000
    @Option(help: "Concurrent HTTP clients.") var concurrency = 4
    @Option(help: "Devices (connections) generating events.") var devices = 500
    @Option(help: "Store to benchmark: sqlite (a temporary file) or a postgres://USER@HOST:PORT/DB server, where a temporary database is created and dropped (password from NOVA_DB_PASSWORD).")
    var store = "sqlite"
    @Option(help: "PostgreSQL only: events written by the seed's one-transaction-per-event design (it is slow; a sample suffices).")
    var seedSample = 20_000
    @Option(help: "PostgreSQL only: concurrent connections of the seed's design.") var seedConnections = 20
    @OptionGroup var options: BenchOptions

    func validate() throws {
        guard events >= 1, batch >= 1, concurrency >= 1, devices >= 1 else {
            throw ValidationError("--events, --batch, --concurrency and --devices must be at least 1")
        }
    }

    func run() async throws {
        try options.checkBuild()
        let work = try benchWorkDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }

        FileHandle.standardError.write(Data("generating \(events) events of \(devices) devices...\n".utf8))
        let generated = DeviceFrames(devices: devices).make(events)
        let bodies = stride(from: 0, to: events, by: batch).map { start in
            var out = [UInt8]()
            for event in generated[start..<min(events, start + batch)] {
                DeviceFrames.writeIngestLine(event, into: &out)
            }
            return ByteBuffer(bytes: out)
        }

        var errors = [String]()
        var checks = [String]()
        let logger = toolLogger()
        let benchStore = try await BenchStore(store, directory: work, logger: logger)
        defer { benchStore.drop() }
        let benchDatabase = benchStore.database
        let recorder = try await RecorderChild(directory: work, database: benchDatabase == nil ? nil : benchStore.childConfiguration)
        try await recorder.waitUntilReady()
        let progress = Progress("nova ingest", total: events)
        let started = ContinuousClock.now
        let outcome = try await post(bodies, to: recorder.base, progress: progress)
        let elapsed = ContinuousClock.now - started
        let rss = peakRSS(pid: recorder.pid)
        errors += outcome.errors
        if outcome.accepted != events { errors.append("accepted \(outcome.accepted) of \(events) events") }
        let readBack = try await verify(recorder.base, expected: generated)
        errors += readBack.errors
        checks += readBack.checks
        await recorder.stop()

        var baselines = [BenchFigure]()
        if let benchDatabase {
            FileHandle.standardError.write(Data("baseline: COPY of the same rows into a table with a primary key and both ordering indexes...\n".utf8))
            let copy = try await PostgresBaselines.copyInsert(generated, batchSize: batch, location: benchDatabase, logger: logger)
            baselines.append(.throughput("baseline: COPY, primary key + both indexes, no dedupe", events: events, time: copy))
            let sample = min(seedSample, events)
            FileHandle.standardError.write(Data("baseline: the seed's design, one transaction per event, \(seedConnections) connections, \(sample) events...\n".utf8))
            let seed = try await PostgresBaselines.seedDesign(Array(generated.prefix(sample)), connections: seedConnections, location: benchDatabase, logger: logger)
            baselines.append(.throughput("baseline: seed design, 1 tx + 2 INSERTs per event", events: sample, time: seed))
        } else {
            FileHandle.standardError.write(Data("baseline: plain prepared-statement insert of the same rows...\n".utf8))
            let plain = try SQLitePlainInsert.run(generated, batchSize: batch, path: (work as NSString).appendingPathComponent("baseline.db"))
            baselines.append(.throughput("baseline: plain SQLite insert, same indexes, no dedupe", events: events, time: plain))
        }
        let nova = BenchFigure.throughput(
            "nova HTTP ingest (\(benchDatabase == nil ? "sqlite" : "postgres")): NDJSON, \(batch)/batch, \(concurrency) clients, dedupe",
            events: events, time: elapsed)
        let report = BenchReport(
            benchmark: benchDatabase == nil ? "ingest" : "ingest-postgres", store: await benchStore.describe(),
            groups: [BenchGroup("ingest of \(events) raw frames", figure: nova, baselines: baselines)],
            peakRSSBytes: rss, checks: checks, errors: errors)
        report.printTable()
        if let json = options.json { try report.write(to: json) }
        if !errors.isEmpty { throw ExitCode(1) }
    }

    private struct Outcome {
        var accepted = 0
        var errors: [String] = []
    }

    private func post(_ bodies: [ByteBuffer], to base: String, progress: Progress) async throws -> Outcome {
        let next = Counter()
        let done = Counter()
        return try await withThrowingTaskGroup(of: Outcome.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    var outcome = Outcome()
                    while true {
                        let k = await next.increment() - 1
                        guard k < bodies.count else { return outcome }
                        var request = HTTPClientRequest(url: "\(base)/v1/events")
                        request.method = .POST
                        request.headers.add(name: "Content-Type", value: "application/x-ndjson")
                        request.body = .bytes(bodies[k])
                        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(120))
                        let body = String(buffer: try await response.body.collect(upTo: 1 << 24))
                        guard response.status == .ok, let json = try? JSONParser.parse(body), case .number(let n)? = json["accepted"],
                              let accepted = n.int64
                        else {
                            outcome.errors.append("batch \(k): HTTP \(response.status.code): \(body.prefix(200))")
                            continue
                        }
                        outcome.accepted += Int(accepted)
                        progress.update(await done.add(Int(accepted)))
                    }
                }
            }
            var total = Outcome()
            for try await o in group {
                total.accepted += o.accepted
                total.errors += o.errors
            }
            return total
        }
    }

    /// Reads every event back in source order; checks count, order and the set of ids.
    private func verify(_ base: String, expected: [Event]) async throws -> (checks: [String], errors: [String]) {
        var count = 0
        var digest = EventID.zero
        var last: OrderingKey?
        var outOfOrder = 0
        var cursor: String?
        let decoder = EventDecoder()
        repeat {
            var url = "\(base)/v1/events?scope=\(DeviceFrames.scope)&from=1970-01-01T00:00:00Z&to=9999-12-31T00:00:00Z&timebase=source&lane=raw&limit=100000"
            if let cursor { url += "&after=\(cursor)" }
            let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(300))
            let body = try await response.body.collect(upTo: 1 << 30)
            guard response.status == .ok else { return ([], ["read-back failed: HTTP \(response.status.code)"]) }
            let batch = try body.withUnsafeReadableBytes { raw in
                try IngestBatch(body: raw.bindMemory(to: UInt8.self), format: .ndjson, decoder: decoder, receivedAt: .min)
            }
            if !batch.rejected.isEmpty { return ([], ["read-back: invalid event: \(batch.rejected[0].error)"]) }
            for event in batch.events {
                let key = event.orderingKey(.source)
                if let last, !(last < key) { outOfOrder += 1 }
                last = key
                digest = digest ^ event.eventId
                count += 1
            }
            cursor = response.headers.first(name: "Nova-Next-Cursor")
        } while cursor != nil
        let want = expected.reduce(EventID.zero) { $0 ^ $1.eventId }
        var errors = [String]()
        if count != expected.count { errors.append("read back \(count) events, expected \(expected.count)") }
        if outOfOrder > 0 { errors.append("\(outOfOrder) events out of contract order") }
        if digest != want { errors.append("the ids read back differ from the ids sent (XOR digest)") }
        // A check is claimed only when it held; the errors say what did not.
        return (errors.isEmpty ? ["read back \(count) events in contract order, ids match (XOR digest)"] : [], errors)
    }
}

/// A shared counter for the benchmark's worker tasks.
actor Counter {
    private var value = 0
    func increment() -> Int {
        value += 1
        return value
    }

    func add(_ n: Int) -> Int {
        value += n
        return value
    }
}

/// Realistic raw frames: `devices` connections at 10 Hz with increasing sequence numbers and
/// 32–64 byte payloads, in time order, as a fleet sends them.
struct DeviceFrames {
    static let scope = "bench-site"
    var devices: Int
    var start = Timestamp(microseconds: 1_780_000_000_000_000)

    func make(_ count: Int) -> [Event] {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        return (0..<count).map { k in
            let device = k % devices
            let tick = Int64(k / devices)
            let source = Timestamp(microseconds: start.microseconds + tick * 100_000 + Int64(device) * 7)
            var bytes = [UInt8]()
            bytes.reserveCapacity(64)
            while bytes.count < 32 + k % 33 {
                // xorshift: cheap filler for frame contents
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                withUnsafeBytes(of: state) { bytes.append(contentsOf: $0.prefix(32 + k % 33 - bytes.count)) }
            }
            return Event(
                scopeId: Self.scope, sourceTruthTime: source, canonicalTruthTime: source,
                fields: .raw(connectionId: "dev-\(device)", sequence: tick, bytes: bytes))
        }
    }

    /// The line a device would send: no `canonicalTruthTime` (the recorder assigns it), no id.
    static func writeIngestLine(_ event: Event, into out: inout [UInt8]) {
        guard case .raw(let connectionId, let sequence, let bytes) = event.fields else { return }
        out.append(contentsOf: #"{"lane":"raw","scopeId":"\#(event.scopeId)","sourceTruthTime":"\#(event.sourceTruthTime.rfc3339)","connectionId":"\#(connectionId)","sequence":\#(sequence),"bytes":"\#(Base64.encode(bytes))"}"#.utf8)
        out.append(UInt8(ascii: "\n"))
    }
}
