import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NovaCore

/// `nova bench sync`: how fast an edge's backlog drains to the hub, and how far a site lags
/// behind under a steady ingest (sync.md).
struct BenchSync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Catch-up rate of an edge backlog to the hub, and site lag at a steady ingest rate.",
        discussion: """
            CATCH-UP: --events raw frames are loaded into an edge store, then a recorder starts \
            on it shipping to a hub (`nova serve` on --store) over loopback; the figure is the \
            backlog over the time until the hub's watermark covers it. Baseline, same run: the \
            same number of events posted by one client, in batches of --batch-size, to the \
            POST /v1/events of a hub on a fresh store of the same kind (the hub's own ingest \
            path). LAG: a fresh edge ingests --rate events/s for --seconds s while the hub's \
            lagSeconds for the site (now − completeThrough) is sampled every 100 ms; beside it, \
            the edge's ingest acknowledgement latency. Afterwards the hub must hold every event \
            (verified with bucket digests); exit 1 otherwise.
            """
    )

    @Option(help: "Backlog events for the catch-up.") var events = 5_000_000
    @Option(help: "Sync batch size (sync.batchSize).") var batchSize = 20_000
    @Option(help: "LAG: ingest rate, events per second.") var rate = 50_000
    @Option(help: "LAG: seconds of ingest.") var seconds = 20
    @Option(help: "Devices (connections).") var devices = 500
    @Option(help: "sync.compression of the edges: gzip or none.") var compression = "gzip"
    @Option(help: "The hub's store: sqlite, or a postgres://USER@HOST:PORT/DB server where temporary databases are created and dropped.")
    var store = "sqlite"
    @OptionGroup var options: BenchOptions

    func run() async throws {
        try options.checkBuild()
        guard events > 0, batchSize > 0, rate > 0, seconds > 0 else { throw ValidationError("--events, --batch-size, --rate, --seconds: positive") }
        guard ["gzip", "none"].contains(compression) else { throw ValidationError("--compression: gzip or none") }
        let work = try benchWorkDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let logger = toolLogger()
        func dir(_ name: String) throws -> String {
            let path = (work as NSString).appendingPathComponent(name)
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            return path
        }
        var errors = [String]()
        var checks = [String]()
        var rss: Int?

        // CATCH-UP: a loaded edge store, then a recorder shipping it to a fresh hub.
        let hubStore = try await BenchStore(store, directory: try dir("hub"), logger: logger)
        defer { hubStore.drop() }
        let edgeStore = try await BenchStore("sqlite", directory: try dir("edge"), logger: logger)
        let backlog = DeviceFrames(devices: devices, start: Timestamp(microseconds: 1_790_000_000_000_000)).make(events)
        try await edgeStore.load(events) { Array(backlog[$0]) }
        let hub = try await RecorderChild(directory: try dir("hub-run"), database: hubStore.childConfiguration)
        try await hub.waitUntilReady()
        let sync = #", "core": {"siteId": "bench-edge"}, "sync": {"enabled": true, "upstream": "\#(hub.base)", "batchSize": \#(batchSize), "compression": "\#(compression)"}"#
        let started = ContinuousClock.now
        let edge = try await RecorderChild(directory: try dir("edge-run"), database: edgeStore.childConfiguration, extra: sync, record: true)
        let progress = Progress("catch-up", total: events)
        var acked: Int64 = 0
        while acked < Int64(events) {
            try await Task.sleep(for: .milliseconds(50))
            acked = try await Self.ackedSeq(hub: hub.base) ?? 0
            progress.update(Int(acked))
            if ContinuousClock.now - started > .seconds(3_600) {
                errors.append("the backlog did not drain within an hour (\(acked) of \(events))")
                break
            }
        }
        let catchUp = BenchFigure.throughput("nova sync: backlog shipped edge → hub, until acknowledged", events: Int(acked), time: ContinuousClock.now - started)
        rss = peakRSS(pid: edge.pid)
        let catchUpDifferences = try await Self.compare(edge: edge.base, hub: hub.base, scope: DeviceFrames.scope)
        errors += catchUpDifferences
        if catchUpDifferences.isEmpty { checks.append("CATCH-UP: the hub's bucket digests equal the edge's (count and XOR of ids per minute)") }
        await edge.stop()

        // Baseline: the same amount posted to a fresh hub's own ingest, one batch at a time.
        let baseStore = try await BenchStore(store, directory: try dir("base"), logger: logger)
        defer { baseStore.drop() }
        let baseHub = try await RecorderChild(directory: try dir("base-run"), database: baseStore.childConfiguration)
        try await baseHub.waitUntilReady()
        let baseFrames = DeviceFrames(devices: devices, start: Timestamp(microseconds: 1_791_000_000_000_000)).make(events)
        let baseStarted = ContinuousClock.now
        let baseProgress = Progress("baseline: hub ingest", total: events)
        for chunk in stride(from: 0, to: events, by: batchSize) {
            var body = [UInt8]()
            for event in baseFrames[chunk..<min(events, chunk + batchSize)] { event.writeJSON(into: &body); body.append(UInt8(ascii: "\n")) }
            var request = HTTPClientRequest(url: "\(baseHub.base)/v1/events")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-ndjson")
            request.body = .bytes(ByteBuffer(bytes: body))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(120))
            _ = try await response.body.collect(upTo: 1 << 20)
            if response.status != .ok { errors.append("baseline ingest answered \(response.status.code)") }
            baseProgress.update(min(events, chunk + batchSize))
        }
        let baseline = BenchFigure.throughput("baseline: the same events posted to a hub's POST /v1/events, one batch at a time", events: events, time: ContinuousClock.now - baseStarted)
        await baseHub.stop()

        // LAG: a fresh edge at a steady rate, shipping to the first hub.
        let lagEdgeStore = try await BenchStore("sqlite", directory: try dir("lag-edge"), logger: logger)
        let lagSync = #", "core": {"siteId": "bench-lag"}, "sync": {"enabled": true, "upstream": "\#(hub.base)", "batchSize": \#(batchSize), "compression": "\#(compression)"}"#
        let lagEdge = try await RecorderChild(directory: try dir("lag-run"), database: lagEdgeStore.childConfiguration, extra: lagSync, record: true)
        let (lag, ack, lagErrors, note) = try await measureLag(edge: lagEdge.base, hub: hub.base)
        errors += lagErrors
        checks.append(note)
        rss = max(rss ?? 0, peakRSS(pid: lagEdge.pid) ?? 0)
        let lagDifferences = try await Self.compare(edge: lagEdge.base, hub: hub.base, scope: "bench-lag")
        errors += lagDifferences
        if lagDifferences.isEmpty { checks.append("LAG: after the run the hub's bucket digests equal the edge's") }
        await lagEdge.stop()
        await hub.stop()

        let report = BenchReport(
            benchmark: hubStore.database == nil ? "sync" : "sync-postgres", store: "hub: \(await hubStore.describe())",
            groups: [
                BenchGroup("CATCH-UP of a \(events)-event backlog, batches of \(batchSize), \(compression == "gzip" ? "gzipped" : "uncompressed"), over loopback", figure: catchUp, baselines: [baseline]),
                BenchGroup("LAG at \(rate) events/s for \(seconds) s", figure: lag, baselines: [ack]),
            ],
            peakRSSBytes: rss, checks: checks, errors: errors)
        report.printTable()
        if let json = options.json { try report.write(to: json) }
        if !errors.isEmpty { throw ExitCode(1) }
    }

    /// Posts raw frames to the edge at `rate` (4 writers, batches of 2,500) and samples the hub's
    /// lag for the site every 100 ms; then waits for the site to drain.
    private func measureLag(edge: String, hub: String) async throws -> (BenchFigure, BenchFigure, [String], String) {
        let total = rate * seconds
        let batch = 2_500
        let frames = DeviceFrames(devices: devices, start: Timestamp(microseconds: 1_792_000_000_000_000)).make(total)
        let bodies = stride(from: 0, to: total, by: batch).map { start in
            var out = [UInt8]()
            for event in frames[start..<min(total, start + batch)] {
                // Events carry a scope of their own; the recorder gives them its receive time.
                var e = event
                e.scopeId = "bench-lag"
                DeviceFrames.writeIngestLine(e, into: &out)
            }
            return ByteBuffer(bytes: out)
        }
        let sampling = Task {
            var samples = [Double]()
            while !Task.isCancelled {
                if let lag = try? await Self.site(hub: hub, "bench-lag")?["lagSeconds"], case .number(let n) = lag { samples.append(n.double) }
                try? await Task.sleep(for: .milliseconds(100))
            }
            return samples
        }
        let progress = Progress("LAG ingest", total: total)
        let (ackSamples, errors, wall) = try await postPaced(bodies, to: edge, batch: batch, rate: rate, progress: progress)
        sampling.cancel()
        let lagSamples = await sampling.value
        // Drain: the site's watermark reaches everything the edge holds.
        let deadline = ContinuousClock.now + .seconds(600)
        while ContinuousClock.now < deadline {
            if case .number(let pending)? = try await Self.site(hub: hub, "bench-lag")?["pendingEvents"], pending.double == 0,
               case .number(let acked)? = try await Self.site(hub: hub, "bench-lag")?["ackedSeq"], acked.int64 == Int64(total) {
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let reached = Double(total) / wall.seconds
        let note = String(format: "LAG: the edge took %.0f of the asked %d events/s%@; %d lag samples", reached, rate, reached < Double(rate) * 0.9 ? " (saturated)" : "", lagSamples.count)
        return (
            .latency("nova sync: the site's lag at the hub (now − completeThrough), sampled", samples: lagSamples, wall: wall, events: total),
            .latency("context: the edge's ingest acknowledgement (send → ack)", samples: ackSamples, wall: wall, events: total),
            errors, note
        )
    }

    static func site(hub: String, _ siteId: String) async throws -> JSONValue? {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: "\(hub)/v1/sync/sites"), timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 1 << 24)
        guard case .array(let sites)? = (try JSONParser.parse(Array(body.readableBytesView)))["sites"] else { return nil }
        return sites.first { $0["siteId"] == .string(siteId) }
    }

    static func ackedSeq(hub: String) async throws -> Int64? {
        guard case .number(let n)? = try await site(hub: hub, "bench-edge")?["ackedSeq"] else { return nil }
        return n.int64
    }

    /// The differing buckets between the edge and the hub for `scope`, as error lines.
    static func compare(edge: String, hub: String, scope: String) async throws -> [String] {
        let verify = Process()
        verify.executableURL = URL(fileURLWithPath: currentExecutable())
        verify.arguments = ["verify", edge, hub, "--scope", scope]
        verify.environment = BenchLifetime.childEnvironment()
        let out = Pipe()
        verify.standardOutput = out
        verify.standardError = FileHandle.nullDevice
        try verify.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        verify.waitUntilExit()
        return verify.terminationStatus == 0 ? [] : ["nova verify found differences for \(scope): \(text.split(separator: "\n").prefix(5).joined(separator: "; "))"]
    }
}
