import ArgumentParser
import Foundation

/// `nova bench all`: every benchmark in turn on one store, then one summary.
///
/// Each benchmark runs exactly as its own command would (same code, same checks); this only
/// passes the shared sizes on, keeps going after a failure so that one bad figure does not hide
/// the others, and exits 1 if any benchmark failed.
struct BenchAll: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "all",
        abstract: "Run ingest, query, stream, sync and (on PostgreSQL) migrate, then summarize.",
        discussion: """
            Sizes left out are each benchmark's own defaults (see `nova bench <name> --help`). \
            migrate needs a PostgreSQL server and is skipped, with a note, for --store sqlite. \
            With --json-dir, each report is written there as <benchmark>.json, ready for \
            `nova bench table`.
            """
    )

    @Option(help: "sqlite, or a postgres://USER@HOST:PORT/DB server where temporary databases are created and dropped (password from NOVA_DB_PASSWORD).")
    var store = "sqlite"
    @Option(help: "Events for every benchmark (default: each one's own).") var events: Int?
    @Option(help: "Seconds of each timed part: query windows, LIVE streaming, sync LAG.") var seconds: Int?
    @Option(help: "Ingest rate, events/s, of the LIVE stream and sync LAG parts.") var rate: Int?
    @Option(help: "Concurrent clients of the query and LIVE stream benchmarks.") var clients: Int?
    @Option(help: "Directory for one JSON report per benchmark.") var jsonDir: String?
    @Flag(help: "Run in a debug build anyway (figures are meaningless; for smoke tests).") var allowDebug = false

    func validate() throws {
        for (name, value) in [("events", events), ("seconds", seconds), ("rate", rate), ("clients", clients)] {
            if let value, value < 1 { throw ValidationError("--\(name): must be at least 1") }
        }
    }

    func run() async throws {
        let directory = jsonDir ?? NSTemporaryDirectory() + "nova-bench-all-\(ProcessInfo.processInfo.processIdentifier)"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw CLIError("--json-dir \(directory): cannot be created: \(error.localizedDescription)")
        }
        defer { if jsonDir == nil { try? FileManager.default.removeItem(atPath: directory) } }

        var outcomes = [(name: String, file: String?, failure: String?)]()
        for (name, type, arguments) in plan() {
            guard let arguments else {
                outcomes.append((name, nil, "skipped: needs --store postgres://…"))
                continue
            }
            let file = "\(directory)/\(name).json"
            let argv = arguments + ["--store", store, "--json", file] + (allowDebug ? ["--allow-debug"] : [])
            print("\n== nova bench \(name) \(argv.joined(separator: " "))")
            do {
                guard var command = try type.parse(argv) as? any AsyncParsableCommand else { throw CLIError("\(name): not runnable") }
                try await command.run()
                outcomes.append((name, file, nil))
            } catch let exit as ExitCode {
                outcomes.append((name, FileManager.default.fileExists(atPath: file) ? file : nil, "failed (exit \(exit.rawValue))"))
            } catch {
                outcomes.append((name, nil, "failed: \(error)"))
            }
        }

        print("\nnova bench all, store \(store):")
        for outcome in outcomes {
            if let file = outcome.file, let data = FileManager.default.contents(atPath: file),
               let report = try? JSONDecoder().decode(BenchReport.self, from: data) {
                for group in report.groups {
                    let ratios = zip(group.baselines, group.ratios).map { "\($0.name): \(String(format: "%.2f", $1))" }
                    print("  \(outcome.name) · \(group.name): \(group.figure.summary.trimmingCharacters(in: .whitespaces)); ratio \(ratios.joined(separator: "; "))")
                }
            }
            if let failure = outcome.failure { print("  \(outcome.name): \(failure)") }
        }
        if let jsonDir { print("reports in \(jsonDir)/") }
        if outcomes.contains(where: { $0.failure?.hasPrefix("failed") == true }) { throw ExitCode(1) }
    }

    /// Each benchmark with the shared sizes it takes; nil arguments: not runnable on this store.
    func plan() -> [(String, any ParsableCommand.Type, [String]?)] {
        func option(_ name: String, _ value: Int?) -> [String] { value.map { ["--\(name)", "\($0)"] } ?? [] }
        let sized = option("events", events)
        return [
            ("ingest", BenchIngest.self, sized),
            ("query", BenchQuery.self, sized + option("seconds", seconds) + option("clients", clients)),
            ("stream", BenchStream.self, sized + option("seconds", seconds) + option("rate", rate) + option("clients", clients)),
            ("sync", BenchSync.self, sized + option("seconds", seconds) + option("rate", rate)),
            ("migrate", BenchMigrate.self, store.hasPrefix("postgres") ? sized : nil),
        ]
    }
}
