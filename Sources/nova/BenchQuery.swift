import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import NovaCore
import NovaPostgres
import NovaSQLite

/// `nova bench query`: ordered range queries through the HTTP API from concurrent clients, beside
/// the same SQL through a bare driver, on a store loaded with a day of a fleet's events.
struct BenchQuery: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query",
        abstract: "Range queries over HTTP from concurrent clients vs the same SQL through a bare driver.",
        discussion: """
            Loads --events raw frames of --devices devices spread over --hours hours into a fresh \
            store, starts `nova record` (SQLite) or `nova serve` (PostgreSQL) on it, then for each \
            window size runs --clients concurrent clients for --seconds seconds, each asking for a \
            random window in contract order, and checks every answer's count (and every hundredth \
            answer's events and their order). The baseline runs the same SQL with the same windows through GRDB or \
            postgres-nio directly. Reports p50/p95/p99 and queries/s; exits 1 on any wrong answer.

            Each client first asks as fast as it can: that measures capacity, and its latency is \
            mostly queueing for the machine's cores. Then, for each --loads fraction of the \
            capacity NOVA just showed, the clients ask on a fixed schedule at that total rate (both \
            sides get the same rate), and a latency counts from the moment a query was due, so a \
            client that falls behind pays for its backlog.
            """
    )

    @Option(help: "Events to load.") var events = 10_000_000
    @Option(help: "Devices (connections).") var devices = 500
    @Option(help: "Hours the events span.") var hours = 24
    @Option(help: "Concurrent clients.") var clients = 20
    @Option(help: "Seconds of querying per window size and side.") var seconds = 15
    @Option(help: "Window sizes in seconds, comma separated.") var windows = "1,60"
    @Option(help: "Paced loads, as fractions of NOVA's capacity measured just before, comma separated, or none.")
    var loads = "0.25,0.5"
    @Option(help: "sqlite, or a postgres://USER@HOST:PORT/DB server where a temporary database is created and dropped.")
    var store = "sqlite"
    @OptionGroup var options: BenchOptions

    func run() async throws {
        try options.checkBuild()
        let windowSeconds = try windows.split(separator: ",").map { part -> Int in
            guard let w = Int(part), w > 0 else { throw ValidationError("--windows: positive integers, comma separated") }
            return w
        }
        let loadFractions = try (loads == "none" ? [] : loads.split(separator: ",")).map { part -> Double in
            guard let f = Double(part), f > 0, f < 1 else { throw ValidationError("--loads: fractions between 0 and 1 (exclusive), comma separated") }
            return f
        }
        let work = try benchWorkDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let logger = toolLogger()
        let layout = Layout(events: events, devices: devices, span: Int64(hours) * 3_600_000_000)

        let benchStore = try await BenchStore(store, directory: work, logger: logger)
        defer { benchStore.drop() }
        let database = benchStore.database
        let sqlitePath = benchStore.sqlitePath
        try await benchStore.load(events) { layout.events($0) }
        let childDatabase = benchStore.childConfiguration
        let child = try await RecorderChild(directory: work, database: childDatabase)
        try await child.waitUntilReady()

        var groups = [BenchGroup]()
        var errors = [String]()
        var checked = 0
        let port = child.port
        for w in windowSeconds {
            let window = Int64(w) * 1_000_000
            var capacity: Double?
            for load in [nil] + loadFractions.map(Optional.init) {
                let rate = load.flatMap { f in capacity.map { $0 * f } }
                if load != nil, (rate ?? 0) < 1 { continue }  // under one query a second: no such row
                let pace = rate.map { String(format: ", %.0f queries/s offered (%.0f%% of capacity)", $0, load! * 100) } ?? ", as fast as they can"
                let group = "\(w)-second windows over \(events) events, \(clients) clients\(pace)"
                FileHandle.standardError.write(Data("\(group): \(seconds) s through the HTTP API, then \(seconds) s through the bare driver...\n".utf8))
                var connections = [BenchHTTPConnection]()
                defer { connections.forEach { $0.close() } }
                for _ in 0..<clients { connections.append(try await BenchHTTPConnection.connect(port: port)) }
                let cpuBefore = cpuSeconds(pid: child.pid)
                var nova = try await measureHTTP("nova HTTP, \(clients) clients", window: window, layout: layout, rate: rate, connections: connections)
                if let cpuBefore, let cpuAfter = cpuSeconds(pid: child.pid), let queries = nova.figure.queries, queries > 0 {
                    nova.figure.serverCPUPerQueryMs = (cpuAfter - cpuBefore) * 1000 / Double(queries)
                }
                errors += nova.errors
                checked += nova.figure.queries ?? 0
                if load == nil { capacity = nova.figure.queriesPerSecond }
                let bare: BenchFigure
                if let database {
                    let pg = PostgresBareQuery(location: database, connections: clients, logger: logger)
                    bare = try await measure("baseline: same SQL, bare postgres-nio", window: window, layout: layout, rate: rate) { _, read in
                        ByteBuffer(integer: Int64(try await pg.count(read)))
                    }.figure
                    pg.close()
                } else {
                    let sqlite = try SQLiteBareQuery(path: sqlitePath)
                    bare = try await measure("baseline: same SQL, bare GRDB", window: window, layout: layout, rate: rate) { _, read in
                        ByteBuffer(integer: Int64(try await sqlite.count(read)))
                    }.figure
                    try sqlite.close()
                }
                groups.append(BenchGroup(group, figure: nova.figure, baselines: [bare]))
            }
        }
        let rss = peakRSS(pid: child.pid)
        await child.stop()
        let report = BenchReport(
            benchmark: database == nil ? "query" : "query-postgres", store: await benchStore.describe(), groups: groups, peakRSSBytes: rss,
            checks: ["\(checked) HTTP answers checked for their count, every hundredth also for valid events in contract order"], errors: errors)
        report.printTable()
        if let json = options.json { try report.write(to: json) }
        if !errors.isEmpty { throw ExitCode(1) }
    }

    /// Runs `clients` concurrent loops of random `window` queries for `seconds` (`query` is told
    /// its client's number); an answer is a ByteBuffer of NDJSON (checked) or of one Int64 row
    /// count (a baseline's, also checked).
    /// With a `rate` (queries/s over all clients), each client's queries fall due on a fixed
    /// schedule (its own phase, then every `clients / rate` seconds) and a latency runs from when
    /// its query was due, not from when it was sent.
    private func measure(
        _ name: String, window: Int64, layout: Layout, rate: Double? = nil, query: @escaping @Sendable (Int, LaneRead) async throws -> ByteBuffer
    ) async throws -> (figure: BenchFigure, errors: [String]) {
        let start = ContinuousClock.now
        let (clients, seconds) = (clients, seconds)
        let tallies = try await withThrowingTaskGroup(of: ClientTally.self) { group in
            for client in 0..<clients {
                group.addTask {
                    var tally = ClientTally(name, client: client, of: clients, window: window, layout: layout, rate: rate, start: start, seconds: seconds)
                    while let (read, due) = tally.next() {
                        if due > ContinuousClock.now { try await Task.sleep(until: due, clock: .continuous) }
                        tally.record(try await query(client, read), for: read, dueAt: due)
                    }
                    return tally
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        return ClientTally.figure(name, tallies, wall: ContinuousClock.now - start)
    }

    /// `measure` for the HTTP clients, each driven on its connection's event loop: an answer's
    /// arrival sends the next query there and then. Through a task per client, each query crossed
    /// threads twice (the answer to the task, the request back to the loop), and perf of the
    /// PostgreSQL run showed the benchmark's own process at 12% of the machine it measures the
    /// server on, a fifth of it waking threads.
    private func measureHTTP(
        _ name: String, window: Int64, layout: Layout, rate: Double?, connections: [BenchHTTPConnection]
    ) async throws -> (figure: BenchFigure, errors: [String]) {
        let start = ContinuousClock.now
        let (clients, seconds) = (clients, seconds)
        let tallies = try await withThrowingTaskGroup(of: ClientTally.self) { group in
            for (client, connection) in connections.enumerated() {
                group.addTask {
                    let tally = ClientTally(name, client: client, of: clients, window: window, layout: layout, rate: rate, start: start, seconds: seconds)
                    return try await connection.run(tally) { read in
                        "/v1/events?scope=\(DeviceFrames.scope)&from=\(read.from.rfc3339)&to=\(read.to.rfc3339)&lane=raw&limit=\(read.limit)"
                    }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        return ClientTally.figure(name, tallies, wall: ContinuousClock.now - start)
    }

    /// The lines of an NDJSON answer, by `memchr`: counted byte by byte in Swift, this check was
    /// the largest single cost of the benchmark's own process (perf, 2% of the machine).
    static func lines(_ body: ByteBuffer) -> Int {
        body.withUnsafeReadableBytes { raw in
            guard var at = raw.baseAddress else { return 0 }
            let end = at + raw.count
            var n = 0
            while at < end, let hit = memchr(at, Int32(UInt8(ascii: "\n")), end - at) {
                n += 1
                at = UnsafeRawPointer(hit) + 1
            }
            return n
        }
    }

    /// Checks an NDJSON answer is in contract order; returns what is wrong, or nil.
    static func orderError(_ body: ByteBuffer) -> String? {
        do {
            let batch = try body.withUnsafeReadableBytes { raw in
                try IngestBatch(body: raw.bindMemory(to: UInt8.self), format: .ndjson, decoder: EventDecoder(), receivedAt: .min)
            }
            if let bad = batch.rejected.first { return "an answered event is invalid: \(bad.error)" }
            for (a, b) in zip(batch.events, batch.events.dropFirst()) where !(a.orderingKey(.canonical) < b.orderingKey(.canonical)) {
                return "events out of contract order"
            }
            return nil
        } catch {
            return "an answer is not NDJSON: \(error)"
        }
    }

    /// Where the loaded events lie: event k at `start + k × step`, device k mod `devices`.
    struct Layout: Sendable {
        var events: Int
        var devices: Int
        var span: Int64
        var start = Timestamp(microseconds: 1_780_000_000_000_000)
        var step: Int64 { max(1, span / Int64(events)) }

        func events(_ range: Range<Int>) -> [Event] {
            range.map { k in
                let t = Timestamp(microseconds: start.microseconds + Int64(k) * step)
                var x = UInt64(k) &* 0x9E37_79B9_7F4A_7C15
                let bytes = (0..<6).flatMap { _ -> [UInt8] in
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17
                    return withUnsafeBytes(of: x) { Array($0) }
                }
                return Event(scopeId: DeviceFrames.scope, sourceTruthTime: t, canonicalTruthTime: t,
                             fields: .raw(connectionId: "dev-\(k % devices)", sequence: Int64(k / devices), bytes: bytes))
            }
        }

        /// How many events fall in [from, to).
        func count(from: Timestamp, to: Timestamp) -> Int {
            func firstIndex(atOrAfter t: Timestamp) -> Int64 {
                let d = t.microseconds - start.microseconds
                if d <= 0 { return 0 }
                return min(Int64(events), (d + step - 1) / step)
            }
            return Int(firstIndex(atOrAfter: to) - firstIndex(atOrAfter: from))
        }
    }
}

/// One benchmark client's schedule and tally: the window it asks for next and when that query
/// falls due, the latencies of its answers, and what was wrong with any of them. The same for a
/// client driven by a task (a baseline's) and one driven on an event loop (HTTP).
struct ClientTally: Sendable {
    let name: String
    let window: Int64
    let layout: BenchQuery.Layout
    /// Between a paced client's queries; nil for one that asks as fast as it can.
    let interval: Duration?
    let deadline: ContinuousClock.Instant
    var rng: Xorshift
    var due: ContinuousClock.Instant
    var samples = [Double]()
    var events = 0
    var errors = [String]()

    init(
        _ name: String, client: Int, of clients: Int, window: Int64, layout: BenchQuery.Layout, rate: Double?,
        start: ContinuousClock.Instant, seconds: Int
    ) {
        self.name = name
        self.window = window
        self.layout = layout
        rng = Xorshift(seed: UInt64(client + 1) &* 0x9E37_79B9_7F4A_7C15 | 1)
        let interval = rate.map { Duration.seconds(Double(clients) / $0) }
        self.interval = interval
        due = start + (interval.map { $0 * (Double(client) / Double(clients)) } ?? .zero)
        deadline = start + .seconds(seconds)
    }

    /// The next query and when it is due (now, unless paced), or nil once time is up.
    mutating func next() -> (read: LaneRead, due: ContinuousClock.Instant)? {
        let now = ContinuousClock.now
        guard now < deadline else { return nil }
        if interval == nil { due = now } else if due >= deadline { return nil }
        let offset = Int64(rng.next() % UInt64(max(1, layout.span - window)))
        let from = Timestamp(microseconds: layout.start.microseconds + offset)
        let read = LaneRead(lane: .raw, scopeId: DeviceFrames.scope, timebase: .canonical, from: from,
                            to: Timestamp(microseconds: from.microseconds + window), limit: 100_000)
        return (read, due)
    }

    /// Takes the answer to `read`, which fell due at `due`, as it arrives.
    mutating func record(_ answer: ByteBuffer, for read: LaneRead, dueAt due: ContinuousClock.Instant) {
        samples.append((ContinuousClock.now - due).seconds)
        if let interval { self.due += interval }
        let expected = layout.count(from: read.from, to: read.to)
        let got = answer.readableBytes == 8 ? Int(answer.getInteger(at: answer.readerIndex, as: Int64.self)!) : BenchQuery.lines(answer)
        if got != expected, errors.count < 5 { errors.append("\(name): \(got) events for [\(read.from), \(read.to)), expected \(expected)") }
        // Each event of the answer is decoded and its id recomputed: on every tenth answer that
        // took 4% of the machine that the server is measured on (perf), on every hundredth 0.4%.
        // A client's first answer is one of them.
        if answer.readableBytes != 8, samples.count % 100 == 1, let order = BenchQuery.orderError(answer), errors.count < 5 {
            errors.append("\(name): \(order)")
        }
        events += got
    }

    /// The clients' tallies as one figure, and their errors.
    static func figure(_ name: String, _ tallies: [ClientTally], wall: Duration) -> (figure: BenchFigure, errors: [String]) {
        (.latency(name, samples: tallies.flatMap(\.samples), wall: wall, events: tallies.reduce(0) { $0 + $1.events }), tallies.flatMap(\.errors))
    }
}

/// A small fast generator for picking windows.
struct Xorshift: Sendable {
    var state: UInt64
    init(seed: UInt64) { state = seed == 0 ? 1 : seed }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}
