import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NovaCore
import NovaSync

/// `nova simulate`: a fleet of devices posting events of all five lanes at a steady rate.
struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Device simulator: N devices at R Hz posting all five lanes to a recorder.",
        discussion: """
            Every device sends --rate events a second: raw frames on its connection with increasing \
            sequence numbers (about 60%), parsed messages with typical telemetry payloads (about 37%), \
            and occasional UI updates, commands and metadata. --duplicates resends that share of \
            events verbatim; --late sends that share with a device time up to a minute old. Events \
            are posted every 100 ms as NDJSON batches, at most --in-flight requests at once. At the \
            end (or on Ctrl-C) it reports what it sent and what the recorder answered; it exits 1 \
            if any request failed.
            """
    )

    @Option(help: "Devices.") var devices = 500
    @Option(help: "Events per device per second.") var rate = 10.0
    @Option(help: "Base URL of the recorder.") var target = "http://127.0.0.1:8080"
    @Option(help: "Seconds to run (0 runs until interrupted).") var duration = 60.0
    @Option(help: "The scope the devices record into.") var scope = "sim-site"
    @Option(help: "Share of events resent verbatim (0...1).") var duplicates = 0.01
    @Option(help: "Share of events sent late, with an older device time (0...1).") var late = 0.01
    @Option(help: "Concurrent requests at most.") var inFlight = 4
    @Option(help: "Environment variable holding a bearer token with the ingest role.") var tokenEnv = "NOVA_TOKEN"
    @Option(help: "PEM file of the authority that signed an https:// recorder's certificate (default: the system's).") var caFile: String?

    func validate() throws {
        guard devices >= 1 else { throw ValidationError("--devices: at least 1") }
        guard rate > 0 else { throw ValidationError("--rate: must be positive") }
        guard duration >= 0 else { throw ValidationError("--duration: must not be negative") }
        guard (0...1).contains(duplicates), (0...1).contains(late) else { throw ValidationError("--duplicates and --late: shares from 0 to 1") }
        guard inFlight >= 1 else { throw ValidationError("--in-flight: at least 1") }
        guard URL(string: target)?.host != nil else { throw ValidationError("--target: not a URL: \(target)") }
    }

    func run() async throws {
        let token = ProcessInfo.processInfo.environment[tokenEnv]
        let http = try caFile.map { caFile throws in try SyncClient.http(trusting: caFile, key: "--ca-file") } ?? .shared
        var fleet = Fleet(devices: devices, scope: scope, duplicates: duplicates, late: late)
        let tally = Tally()
        let slots = AsyncSemaphore(inFlight)
        let tick = Duration.milliseconds(100)
        let perTick = Double(devices) * rate / 10
        let start = ContinuousClock.now
        let end = duration > 0 ? start + .seconds(duration) : nil
        let progress = Progress("simulate", total: duration > 0 ? Int(Double(devices) * rate * duration) : 0)
        var owed = 0.0
        var k = 0
        try await withThrowingTaskGroup(of: Void.self) { group in
            while !Task.isCancelled {
                let due = start + tick * k
                if let end, due >= end { break }
                try await Task.sleep(until: due, clock: .continuous)
                owed += perTick
                let count = Int(owed)
                owed -= Double(count)
                k += 1
                guard count > 0 else { continue }
                var body = [UInt8]()
                for _ in 0..<count { fleet.nextLine(into: &body) }
                await slots.wait()
                group.addTask {
                    defer { Task { await slots.signal() } }
                    await tally.send(ByteBuffer(bytes: body), events: count, to: target, token: token, http: http)
                }
                if duration > 0 { progress.update(min(progress.total, await tally.sent)) }
            }
            try await group.waitForAll()
        }
        let elapsed = ContinuousClock.now - start
        let summary = await tally.summary(elapsed: elapsed)
        print(summary.text)
        if summary.failed { throw ExitCode(1) }
    }
}

/// What the simulator sent and what came back.
actor Tally {
    private(set) var sent = 0
    var accepted = 0
    var duplicates = 0
    var rejected = 0
    var failedRequests = 0
    var lastFailure: String?
    var requests = 0

    func send(_ body: ByteBuffer, events: Int, to target: String, token: String?, http: HTTPClient) async {
        var request = HTTPClientRequest(url: target.hasSuffix("/") ? target + "v1/events" : target + "/v1/events")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-ndjson")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        request.body = .bytes(body)
        sent += events
        requests += 1
        do {
            let response = try await http.execute(request, timeout: .seconds(30))
            let text = String(buffer: try await response.body.collect(upTo: 1 << 24))
            guard response.status == .ok, let json = try? JSONParser.parse(text) else {
                record(failure: "HTTP \(response.status.code): \(text.prefix(200))")
                return
            }
            if case .number(let n)? = json["accepted"] { accepted += Int(n.int64 ?? 0) }
            if case .number(let n)? = json["duplicates"] { duplicates += Int(n.int64 ?? 0) }
            rejected += json["rejected"].map { value -> Int in
                if case .array(let a) = value { return a.count }
                return 0
            } ?? 0
        } catch {
            record(failure: "\(error)")
        }
    }

    private func record(failure: String) {
        failedRequests += 1
        lastFailure = failure
    }

    func summary(elapsed: Duration) -> (text: String, failed: Bool) {
        let seconds = elapsed.seconds
        var lines = [
            "sent \(sent) events in \(requests) requests over \(String(format: "%.1f", seconds)) s (\(Int(Double(sent) / max(seconds, 0.001))) events/s)",
            "recorder answered: \(accepted) accepted, \(duplicates) duplicates, \(rejected) rejected",
        ]
        if failedRequests > 0 { lines.append("FAILED requests: \(failedRequests) (last: \(lastFailure ?? "?"))") }
        return (lines.joined(separator: "\n"), failedRequests > 0)
    }
}

/// Bounds the requests in flight, so a slow recorder slows the simulator instead of piling up.
actor AsyncSemaphore {
    private var permits: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    init(_ permits: Int) { self.permits = permits }

    func wait() async {
        if permits > 0 {
            permits -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func signal() {
        if waiters.isEmpty { permits += 1 } else { waiters.removeFirst().resume() }
    }
}

/// The devices' state: sequence numbers, positions, and recent lines for duplicates.
struct Fleet {
    var devices: Int
    var scope: String
    var duplicates: Double
    var late: Double
    var sequence: [Int64]
    var position: [(lat: Double, lon: Double, alt: Double, battery: Double)]
    var recent: [[UInt8]] = []
    var rng = Xorshift(seed: UInt64(UInt32(truncatingIfNeeded: Timestamp.now().microseconds)) | 1)
    var next = 0
    var registered: Set<Int> = []

    init(devices: Int, scope: String, duplicates: Double, late: Double) {
        self.devices = devices
        self.scope = scope
        self.duplicates = duplicates
        self.late = late
        sequence = Array(repeating: 0, count: devices)
        position = (0..<devices).map { d -> (lat: Double, lon: Double, alt: Double, battery: Double) in
            let row = Double(d % 100), column = Double(d / 100)
            return (lat: 47.0 + row * 0.001, lon: 8.0 + column * 0.001, alt: 400.0, battery: 100.0)
        }
    }

    mutating func unit() -> Double { Double(rng.next() % 1_000_000) / 1_000_000 }

    /// Appends one event line (NDJSON) to `out`.
    mutating func nextLine(into out: inout [UInt8]) {
        if !recent.isEmpty, unit() < duplicates {
            out += recent[Int(rng.next() % UInt64(recent.count))]
            return
        }
        let device = next % devices
        next += 1
        var time = Timestamp.now()
        if unit() < late { time = Timestamp(microseconds: time.microseconds - Int64(1 + rng.next() % 60) * 1_000_000) }
        var line: String
        let common = #""scopeId":"\#(scope)","sourceTruthTime":"\#(time.rfc3339)""#
        if !registered.contains(device) {
            registered.insert(device)
            line = #"{"lane":"metadata",\#(common),"metadataType":"device.registered","payload":{"deviceId":"dev-\#(device)","firmware":"4.5.1","model":"tracker-2"}}"#
        } else {
            let roll = unit()
            if roll < 0.60 {
                sequence[device] += 1
                let frame = (0..<(16 + Int(rng.next() % 48))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                line = #"{"lane":"raw",\#(common),"connectionId":"dev-\#(device)","sequence":\#(sequence[device]),"bytes":"\#(Base64.encode(frame))"}"#
            } else if roll < 0.97 {
                position[device].lat += (unit() - 0.5) * 1e-4
                position[device].lon += (unit() - 0.5) * 1e-4
                position[device].battery = max(0, position[device].battery - 0.001)
                let p = position[device]
                line = #"{"lane":"parsed",\#(common),"streamId":"dev-\#(device)/position","streamType":"position","schemaVersion":"1.2","payload":{"lat":\#(p.lat),"lon":\#(p.lon),"alt":\#(p.alt),"battery":\#(p.battery),"fix":true}}"#
            } else if roll < 0.99 {
                line = #"{"lane":"ui",\#(common),"viewId":"map","payload":{"selected":"dev-\#(device)","zoom":\#(10 + rng.next() % 8)}}"#
            } else if roll < 0.995 {
                line = #"{"lane":"command",\#(common),"targetId":"dev-\#(device)","commandType":"setRate","requestedBy":"operator@example.org","payload":{"hz":10}}"#
            } else {
                line = #"{"lane":"metadata",\#(common),"metadataType":"device.status","payload":{"deviceId":"dev-\#(device)","battery":\#(position[device].battery)}}"#
            }
        }
        let bytes = Array((line + "\n").utf8)
        if recent.count < 1000 { recent.append(bytes) } else { recent[Int(rng.next() % 1000)] = bytes }
        out += bytes
    }
}
