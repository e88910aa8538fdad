import ArgumentParser
import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NovaCore
import NovaPostgres
import NovaSQLite

/// What every benchmark reports alongside its figures: where and how it ran.
struct BenchMachine: Codable {
    var cores: Int
    var memoryBytes: UInt64
    var cpu: String
    var os: String
    var build: String

    static func current() -> BenchMachine {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown"
        #if DEBUG
        let build = "debug"
        #else
        let build = "release"
        #endif
        return BenchMachine(
            cores: ProcessInfo.processInfo.activeProcessorCount, memoryBytes: ProcessInfo.processInfo.physicalMemory,
            cpu: model, os: ProcessInfo.processInfo.operatingSystemVersionString, build: build)
    }
}

/// One measured figure of a benchmark run: a throughput, or latencies of queries.
struct BenchFigure: Codable {
    var name: String
    var events: Int?
    var seconds: Double?
    var eventsPerSecond: Double?
    var queries: Int?
    var queriesPerSecond: Double?
    var p50Ms: Double?
    var p95Ms: Double?
    var p99Ms: Double?
    /// The server process's CPU time (user and system, all threads) per query over the run: what
    /// each query costs the server, which a shared machine's speed changes far less than it
    /// changes queries/s.
    var serverCPUPerQueryMs: Double?

    static func throughput(_ name: String, events: Int, time: Duration) -> BenchFigure {
        BenchFigure(name: name, events: events, seconds: time.seconds, eventsPerSecond: Double(events) / time.seconds)
    }

    /// Latency percentiles of `samples` (seconds each) over `wall` time.
    static func latency(_ name: String, samples: [Double], wall: Duration, events: Int) -> BenchFigure {
        let sorted = samples.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] * 1000 }
        return BenchFigure(
            name: name, events: events, seconds: wall.seconds, queries: sorted.count, queriesPerSecond: Double(sorted.count) / wall.seconds,
            p50Ms: pct(0.50), p95Ms: pct(0.95), p99Ms: pct(0.99))
    }

    var summary: String {
        if let p95Ms, let p50Ms, let p99Ms, let queriesPerSecond {
            return String(format: "p50 %7.2f ms  p95 %7.2f ms  p99 %7.2f ms  %8.0f q/s", p50Ms, p95Ms, p99Ms, queriesPerSecond)
                + (serverCPUPerQueryMs.map { String(format: "  server CPU %.3f ms/q", $0) } ?? "")
        }
        return String(format: "%12.0f ev/s  %8.2f s", eventsPerSecond ?? 0, seconds ?? 0)
    }
}

/// A measured figure beside its baselines, all from the same run.
struct BenchGroup: Codable {
    var name: String
    var figure: BenchFigure
    var baselines: [BenchFigure]
    /// For throughput, figure / baseline (higher is better); for latency, figure p95 / baseline p95
    /// (lower is better). In the order of `baselines`.
    var ratios: [Double]
    var ratioMeaning: String

    init(_ name: String, figure: BenchFigure, baselines: [BenchFigure]) {
        self.name = name
        self.figure = figure
        self.baselines = baselines
        if figure.p95Ms != nil {
            ratios = baselines.map { (figure.p95Ms ?? 0) / max($0.p95Ms ?? 1, 1e-9) }
            ratioMeaning = "p95 latency, nova / baseline (lower is better)"
        } else {
            ratios = baselines.map { (figure.eventsPerSecond ?? 0) / max($0.eventsPerSecond ?? 1, 1e-9) }
            ratioMeaning = "throughput, nova / baseline (higher is better)"
        }
    }
}

/// The JSON a benchmark writes (`--json FILE`), also the source of the README's table.
struct BenchReport: Codable {
    var benchmark: String
    var date: String
    var command: String
    var machine: BenchMachine
    var groups: [BenchGroup]
    var peakRSSBytes: Int?
    /// The measured store: for PostgreSQL its server version and the store's mode.
    var store: String?
    var checks: [String]
    var errors: [String]

    init(benchmark: String, machine: BenchMachine = .current(), store: String? = nil, groups: [BenchGroup], peakRSSBytes: Int?, checks: [String], errors: [String]) {
        self.benchmark = benchmark
        self.store = store
        self.date = Timestamp.now().rfc3339
        self.command = (["nova"] + CommandLine.arguments.dropFirst()).joined(separator: " ")
        self.machine = machine
        self.groups = groups
        self.peakRSSBytes = peakRSSBytes
        self.checks = checks
        self.errors = errors
    }

    func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }

    func printTable() {
        func row(_ f: BenchFigure) -> String {
            "  \(f.name.padding(toLength: 62, withPad: " ", startingAt: 0)) \(f.summary)"
        }
        print("\n\(benchmark) benchmark, \(machine.cores) cores, \(machine.memoryBytes >> 30) GiB, \(machine.build) build")
        if let store { print(" store: \(store)") }
        for group in groups {
            print(" \(group.name):")
            print(row(group.figure))
            for (baseline, ratio) in zip(group.baselines, group.ratios) {
                print(row(baseline) + "   ratio \(String(format: ratio >= 10 ? "%.0f" : "%.2f", ratio))")
            }
        }
        if let group = groups.first, !group.ratios.isEmpty { print("  ratios: \(group.ratioMeaning)") }
        if let rss = peakRSSBytes { print("  peak RSS of the nova process measured: \(rss >> 20) MiB") }
        for check in checks { print("  check: \(check)") }
        for error in errors { print("  ERROR: \(error)") }
    }
}

/// Progress on a terminal (a rewritten line), or a plain log line every few seconds otherwise.
final class Progress: @unchecked Sendable {
    let label: String
    let total: Int
    let start = ContinuousClock.now
    private var lastPrint = ContinuousClock.now
    private let lock = NSLock()
    private let tty = isatty(STDERR_FILENO) == 1

    init(_ label: String, total: Int) {
        self.label = label
        self.total = total
    }

    func update(_ done: Int) {
        lock.lock()
        defer { lock.unlock() }
        let now = ContinuousClock.now
        guard now - lastPrint > (tty ? .milliseconds(250) : .seconds(5)) || done == total else { return }
        lastPrint = now
        let elapsed = Double((now - start).components.seconds) + Double((now - start).components.attoseconds) * 1e-18
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let line = "\(label): \(done)/\(total) (\(total > 0 ? done * 100 / total : 100)%), \(Int(rate)) ev/s, ETA \(Int(eta)) s"
        FileHandle.standardError.write(Data((tty ? "\r\u{1B}[K" + line + (done == total ? "\n" : "") : line + "\n").utf8))
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

/// Peak resident memory of a process (VmHWM), in bytes.
/// The CPU time a process has used so far (user and system, all its threads), from
/// `/proc/PID/stat`.
func cpuSeconds(pid: Int32) -> Double? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")")
    else { return nil }
    // After the command's closing parenthesis: state (field 3) onwards; utime and stime are
    // fields 14 and 15, in clock ticks.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

func peakRSS(pid: Int32) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kb = Int(line.split(separator: " ").dropFirst().first ?? "")
    else { return nil }
    return kb * 1024
}

/// A fresh temporary directory for a benchmark's files, removed should a signal stop it (the
/// caller's `defer` removes it otherwise).
func benchWorkDirectory() throws -> String {
    let work = FileManager.default.temporaryDirectory.appendingPathComponent("nova-bench-\(UUID().uuidString.prefix(8))").path
    try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    BenchLifetime.onSignal {
        // The benchmark's own `defer` may be removing it at the same moment (it runs on and fails
        // once its database is gone); where the two collide one fails half-way, so retry.
        for _ in 0..<5 where FileManager.default.fileExists(atPath: work) {
            try? FileManager.default.removeItem(atPath: work)
            usleep(50_000)
        }
    }
    return work
}

/// An HTTP client for `body`, shut down after it whether it returns or throws (AsyncHTTPClient
/// traps on a client released unshut in debug builds, which turned a benchmark's error into a crash).
func withHTTPClient<T>(_ configuration: HTTPClient.Configuration = .init(), _ body: (HTTPClient) async throws -> T) async throws -> T {
    let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    do {
        let result = try await body(http)
        try await http.shutdown()
        return result
    } catch {
        try? await http.shutdown()
        throw error
    }
}

/// The path of this executable, to start a recorder child process of the same build.
func currentExecutable() -> String {
    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
}

/// A `nova record` child process on a temporary store, for benchmarks.
final class RecorderChild {
    let process = Process()
    let directory: String
    let base: String
    var port: Int { Int(base.split(separator: ":").last!)! }

    /// A recorder on a SQLite file in `directory`, or with `database` (a `database` configuration
    /// object), `nova serve` on that store. `extra`: more top-level keys (`, "sync": {…}`);
    /// with `record`, a recorder even when `database` is given.
    init(directory: String, database: String? = nil, extra: String = "", record: Bool = false) async throws {
        self.directory = directory
        let config = (directory as NSString).appendingPathComponent("config.json")
        let db = database ?? #"{"sqlite": {"path": "\#((directory as NSString).appendingPathComponent("nova.db"))"}}"#
        try Data(#"{"database": \#(db), "server": {"port": 0}\#(extra)}"#.utf8).write(to: URL(fileURLWithPath: config))
        let out = (directory as NSString).appendingPathComponent("recorder.out")
        FileManager.default.createFile(atPath: out, contents: nil)
        process.executableURL = URL(fileURLWithPath: currentExecutable())
        process.arguments = [database == nil || record ? "record" : "serve", "--config", config, "--log-level", "warning"]
        process.environment = BenchLifetime.childEnvironment()
        process.standardOutput = FileHandle(forWritingAtPath: out)
        try process.run()
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("nova: listening on ") }) {
                base = String(line.dropFirst("nova: listening on ".count).split(separator: " ")[0])
                return
            }
            guard process.isRunning, ContinuousClock.now < deadline else { throw CLIError("the recorder did not start: see \(out)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    var pid: Int32 { process.processIdentifier }

    /// Waits until `/readyz` answers 200 (a hub connects and prepares its schema first).
    func waitUntilReady(timeout: Duration = .seconds(120)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: "\(base)/readyz"), timeout: .seconds(5)),
               response.status == .ok {
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw CLIError("the recorder at \(base) did not become ready; see \(directory)/recorder.out")
    }

    /// SIGTERM, then waits, for `patience` at most and then SIGKILL (a benchmark must end even if a
    /// recorder's shutdown hangs); says so on stderr when the recorder took long or did not exit
    /// cleanly (a benchmark's figures stand, but a slow or crashing shutdown is a fault to look into).
    func stop(patience: Duration = .seconds(60)) async {
        let started = ContinuousClock.now
        process.terminate()
        while process.isRunning {
            if ContinuousClock.now - started > patience {
                kill(process.processIdentifier, SIGKILL)
                FileHandle.standardError.write(Data("warning: nova \(process.arguments?.first ?? "recorder") at \(base) did not stop within \(Int(patience.seconds)) s of SIGTERM; killed (see \(directory)/recorder.out)\n".utf8))
                while process.isRunning { try? await Task.sleep(for: .milliseconds(10)) }
                return
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
        let took = ContinuousClock.now - started
        let role = process.arguments?.first ?? "recorder"
        if process.terminationReason == .uncaughtSignal || process.terminationStatus != 0 || took > .seconds(5) {
            let how = process.terminationReason == .uncaughtSignal ? "died of signal \(process.terminationStatus)" : "exited \(process.terminationStatus)"
            FileHandle.standardError.write(Data("warning: nova \(role) at \(base) \(how), \(took.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 1)))) after SIGTERM\n".utf8))
        }
    }
}

/// Where a benchmark's store lives: a SQLite file in its work directory, or a temporary
/// database that it creates on the given PostgreSQL server and drops when done.
final class BenchStore {
    let server: PostgresLocation?
    let database: PostgresLocation?
    let sqlitePath: String
    let logger: Logger

    /// `store`: `sqlite` or a `postgres://` server locator.
    init(_ store: String, directory: String, logger: Logger) async throws {
        self.logger = logger
        sqlitePath = (directory as NSString).appendingPathComponent("nova.db")
        if store == "sqlite" {
            server = nil
            database = nil
        } else {
            guard case .postgres(let location) = try StoreLocator(store) else { throw ValidationError("--store: sqlite or a postgres:// locator") }
            server = location
            let created = try await PostgresBaselines.createDatabase(on: location, logger: logger)
            database = created
            BenchLifetime.onSignal { Self.drop(created, server: location, logger: logger) }
        }
    }

    /// What the report names as the store: SQLite, or PostgreSQL's version and the store's mode.
    func describe() async -> String {
        guard let database else { return "SQLite" }
        return await PostgresBaselines.describe(database, logger: logger) ?? "PostgreSQL (no NOVA store in \(database.database))"
    }

    /// Drops the temporary database (from a `defer`, hence blocking).
    func drop() {
        guard let server, let database else { return }
        Self.drop(database, server: server, logger: logger)
    }

    private static func drop(_ database: PostgresLocation, server: PostgresLocation, logger: Logger) {
        let done = DispatchSemaphore(value: 0)
        Task {
            await PostgresBaselines.dropDatabase(database, server: server, logger: logger)
            done.signal()
        }
        done.wait()
    }

    /// The `database` object of a child recorder's configuration. Benchmark data lies in the
    /// past, so a hub keeps it with a retention far longer than the default 90 days.
    var childConfiguration: String {
        guard let db = database else { return #"{"sqlite": {"path": "\#(sqlitePath)"}}"# }
        return #"{"type": "timescaledb", "timescaledb": {"host": "\#(db.host)", "port": \#(db.port), "database": "\#(db.database)", "user": "\#(db.user)", "password_env": "\#(db.passwordEnv)", "hypertable": {"retentionAfter": "100 years"}}}"#
    }

    /// Appends `count` events made by `make` straight into the store (ingest has its own
    /// benchmark), with progress; on PostgreSQL then settles it with VACUUM ANALYZE, so that
    /// neither side of a comparison races autovacuum.
    func load(_ count: Int, _ make: (Range<Int>) -> [Event]) async throws {
        let store: any EventStore
        var running: Task<Void, any Error>?
        if let database {
            let pg = PostgresStore(location: database, maintainsPartitions: false, retriesRefusals: false, logger: logger)
            running = Task { try await pg.run() }
            try await pg.waitUntilReady()
            store = pg
        } else {
            store = try SQLiteStore.open(path: sqlitePath, logger: logger)
        }
        let progress = Progress("loading", total: count)
        for chunk in stride(from: 0, to: count, by: 5000) {
            _ = try await store.append(make(chunk..<min(count, chunk + 5000)))
            progress.update(min(count, chunk + 5000))
        }
        await store.close()
        running?.cancel()
        if let database {
            FileHandle.standardError.write(Data("VACUUM (ANALYZE) after the load...\n".utf8))
            try await PostgresBaselines.settle(database, logger: logger)
        }
    }
}

/// Posts NDJSON `bodies` (batches of `batch` events) to `base`'s `POST /v1/events` at `rate`
/// events per second from 4 concurrent writers: batch b is due at start + b × batch / rate.
/// Returns each request's send → acknowledgement time, and the first errors.
func postPaced(
    _ bodies: [ByteBuffer], to base: String, batch: Int, rate: Int, progress: Progress, http: HTTPClient = .shared,
    acknowledged: @escaping @Sendable (Int, ContinuousClock.Instant) -> Void = { _, _ in }
) async throws -> (samples: [Double], errors: [String], wall: Duration) {
    let total = progress.total
    let start = ContinuousClock.now
    var ackSamples = [Double]()
    var errors = [String]()
    try await withThrowingTaskGroup(of: ([Double], [String]).self) { group in
        let writers = 4
        for w in 0..<writers {
            group.addTask {
                var samples = [Double]()
                var errs = [String]()
                for b in stride(from: w, to: bodies.count, by: writers) {
                    let due = start + .microseconds(Int64(b) * Int64(batch) * 1_000_000 / Int64(rate))
                    if due > .now { try await Task.sleep(until: due) }
                    var request = HTTPClientRequest(url: "\(base)/v1/events")
                    request.method = .POST
                    request.headers.add(name: "Content-Type", value: "application/x-ndjson")
                    request.body = .bytes(bodies[b])
                    let sent = ContinuousClock.now
                    let response = try await http.execute(request, timeout: .seconds(60))
                    _ = try await response.body.collect(upTo: 1 << 20)
                    let acked = ContinuousClock.now
                    acknowledged(b, acked)
                    samples.append((acked - sent).seconds)
                    if response.status != .ok, errs.count < 5 { errs.append("ingest answered \(response.status.code)") }
                    progress.update(min(total, (b + 1) * batch))
                }
                return (samples, errs)
            }
        }
        for try await (samples, errs) in group {
            ackSamples += samples
            errors += errs
        }
    }
    return (ackSamples, errors, ContinuousClock.now - start)
}
