import ArgumentParser
import Foundation
import NovaCore
import NovaPostgres

/// `nova bench migrate`: the backfill rate of `nova migrate` from SQLite into PostgreSQL, beside
/// `COPY` of the same rows by `psql` in the same run.
struct BenchMigrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Backfill rate of nova migrate (SQLite to PostgreSQL) beside psql COPY of the same rows.",
        discussion: """
            --events raw frames of --devices devices over 24 hours are loaded into a SQLite store; \
            then `nova migrate` (a child process, without its validation) copies them into a new \
            database on the --store server; afterwards `nova verify` must find the two equal. \
            Baseline, same run: the same rows as a text file, loaded by `psql` with one \\copy into \
            a table with a primary key on eventId and both ordering indexes, in another new \
            database. Both databases are dropped at the end. Exits 1 on any error or difference.
            """
    )

    @Option(help: "Events to migrate.") var events = 10_000_000
    @Option(help: "Devices (connections).") var devices = 500
    @Option(help: "nova migrate --batch-size.") var batchSize = 10_000
    @Option(help: "A postgres://USER@HOST:PORT/DB server (password from NOVA_DB_PASSWORD) where temporary databases are created.")
    var store: String
    @OptionGroup var options: BenchOptions

    func run() async throws {
        try options.checkBuild()
        guard events > 0, batchSize > 0 else { throw ValidationError("--events, --batch-size: positive") }
        let work = try benchWorkDirectory()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let logger = toolLogger()
        var errors = [String]()
        var checks = [String]()

        let source = try await BenchStore("sqlite", directory: work, logger: logger)
        let layout = BenchQuery.Layout(events: events, devices: devices, span: 24 * 3_600_000_000)
        try await source.load(events) { layout.events($0) }
        let target = try await BenchStore(store, directory: work, logger: logger)
        defer { target.drop() }
        guard let db = target.database else { throw ValidationError("--store: a postgres:// server") }
        let locator = "postgres://\(db.user)@\(db.host):\(db.port)/\(db.database)"

        FileHandle.standardError.write(Data("nova migrate...\n".utf8))
        let started = ContinuousClock.now
        let migrate = try runChild(["migrate", "--from", "sqlite:\(source.sqlitePath)", "--to", locator, "--batch-size", "\(batchSize)", "--no-verify"])
        // The largest reaped child so far: the migrate process, the only child run before it.
        var usage = rusage()
        let rss = getrusage(__rusage_who_t(RUSAGE_CHILDREN.rawValue), &usage) == 0 ? Int(usage.ru_maxrss) * 1024 : nil
        let figure = BenchFigure.throughput("nova migrate: SQLite → PostgreSQL, batches of \(batchSize), dedupe, checkpoints", events: events, time: ContinuousClock.now - started)
        if migrate.status != 0 { errors.append("nova migrate failed: \(migrate.output.suffix(500))") }
        if !migrate.output.contains("copied: \(events) events") { errors.append("nova migrate did not report copying \(events) events: \(migrate.output.suffix(300))") }
        let verifyStarted = ContinuousClock.now
        let verify = try runChild(["verify", "sqlite:\(source.sqlitePath)", locator])
        let verifySeconds = (ContinuousClock.now - verifyStarted).seconds
        if verify.status != 0 {
            errors.append("nova verify found differences: \(verify.output.suffix(500))")
        } else {
            // What a comparison costs (dual mode compares what is new every `dual.verifyEvery`, and sweeps `verifyWindow` every `sweepEvery`).
            checks.append(String(
                format: "nova verify: the target equals the source (count and XOR of ids per 1-minute bucket); it read both stores in %.1f s, %.0f events/s",
                verifySeconds, Double(events) / max(verifySeconds, 0.001)))
        }

        // Baseline: the same rows, one psql \copy into an indexed table.
        let base = try await BenchStore(store, directory: work, logger: logger)
        defer { base.drop() }
        guard let baseDB = base.database else { throw ValidationError("--store: a postgres:// server") }
        let file = (work as NSString).appendingPathComponent("rows.txt")
        FileManager.default.createFile(atPath: file, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        for chunk in stride(from: 0, to: events, by: 100_000) {
            var text = ""
            for event in layout.events(chunk..<min(events, chunk + 100_000)) {
                guard case .raw(let connectionId, let sequence, let bytes) = event.fields else { continue }
                text += "\\\\x\(event.eventId.hex)\t\(event.scopeId)\t\(event.sourceTruthTime.rfc3339)\t\(event.canonicalTruthTime.rfc3339)\t\(connectionId)\t\(sequence)\t\\\\x\(PostgresBaselines.hex(bytes))\n"
            }
            handle.write(Data(text.utf8))
        }
        try handle.close()
        let psqlTarget = ["-h", baseDB.host, "-p", "\(baseDB.port)", "-U", baseDB.user, "-d", baseDB.database, "-v", "ON_ERROR_STOP=1", "-q"]
        let created = try runTool("psql", psqlTarget + ["-c", PostgresBaselines.copyTableDDL.joined(separator: ";\n")], password: baseDB.password)
        if created.status != 0 { errors.append("psql could not create the baseline table: \(created.output.suffix(300))") }
        FileHandle.standardError.write(Data("psql \\copy...\n".utf8))
        let copyStarted = ContinuousClock.now
        let copy = try runTool("psql", psqlTarget + ["-c", #"\copy "baselineRaw" ("eventId", "scopeId", "sourceTruthTime", "canonicalTruthTime", "connectionId", "sequence", "bytes") FROM '\#(file)'"#], password: baseDB.password)
        let baseline = BenchFigure.throughput("baseline: psql \\copy of the same rows into a table with a primary key and both indexes", events: events, time: ContinuousClock.now - copyStarted)
        if copy.status != 0 { errors.append("psql \\copy failed: \(copy.output.suffix(300))") }

        let report = BenchReport(
            benchmark: "migrate", store: await target.describe(), groups: [BenchGroup("backfill of \(events) raw frames, SQLite → PostgreSQL", figure: figure, baselines: [baseline])],
            peakRSSBytes: rss, checks: checks, errors: errors)
        report.printTable()
        if let json = options.json { try report.write(to: json) }
        if !errors.isEmpty { throw ExitCode(1) }
    }

    /// Runs this nova with `arguments`: its standard output collected, its progress (standard
    /// error) shown.
    private func runChild(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try runTool(currentExecutable(), arguments, password: ProcessInfo.processInfo.environment["NOVA_DB_PASSWORD"])
    }

    private func runTool(_ tool: String, _ arguments: [String], password: String?) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool.hasPrefix("/") ? tool : "/usr/bin/env")
        process.arguments = tool.hasPrefix("/") ? arguments : [tool] + arguments
        process.environment = BenchLifetime.childEnvironment(password.map { ["PGPASSWORD": $0, "NOVA_DB_PASSWORD": $0] } ?? [:])
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
