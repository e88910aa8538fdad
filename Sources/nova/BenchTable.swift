import ArgumentParser
import Foundation

/// `nova bench table`: the README's performance table, regenerated from benchmark JSON files.
struct BenchTable: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "table",
        abstract: "Rewrite the README's performance table from benchmark JSON files.",
        discussion: """
            Reads each --json file written by `nova bench`, and replaces the text between \
            <!-- bench:table --> and <!-- /bench:table --> in the README with one row per figure: \
            the figure, its baselines from the same run and their ratio, the date, the machine and \
            the command that produced it.
            """
    )

    @Argument(help: "Benchmark JSON files, in the order the rows should appear.") var files: [String]
    @Option(help: "The README to update.") var readme = "README.md"

    func run() throws {
        var rows = [
            "| benchmark | figure | baseline (same run) | ratio | date, machine, command |",
            "|---|---|---|---|---|",
        ]
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { throw CLIError("\(file): cannot be read") }
            let report: BenchReport
            do {
                report = try JSONDecoder().decode(BenchReport.self, from: data)
            } catch {
                throw CLIError("\(file): not a nova bench report: \(error)")
            }
            let machine = "\(report.machine.cores) cores, \(report.machine.memoryBytes >> 30) GiB, \(report.machine.build)" + (report.store.map { ", \($0)" } ?? "")
            for group in report.groups {
                for (baseline, ratio) in zip(group.baselines, group.ratios) {
                    let measure = group.figure.p95Ms != nil ? "p95 nova/baseline" : "nova/baseline"
                    rows.append(
                        "| \(report.benchmark): \(group.name) | \(group.figure.name): \(Self.cell(group.figure)) | \(baseline.name): \(Self.cell(baseline)) "
                            + "| \(String(format: "%.2f", ratio)) (\(measure)) | \(report.date.prefix(10)), \(machine), `\(report.command)` |")
                }
                if !report.errors.isEmpty {
                    rows.append("| \(report.benchmark) | run had errors: \(report.errors.count) | | | |")
                }
            }
        }
        guard var text = try? String(contentsOfFile: readme, encoding: .utf8),
              let open = text.range(of: "<!-- bench:table -->"), let close = text.range(of: "<!-- /bench:table -->"), open.upperBound <= close.lowerBound
        else {
            throw CLIError("\(readme): needs the markers <!-- bench:table --> and <!-- /bench:table -->")
        }
        text.replaceSubrange(open.upperBound..<close.lowerBound, with: "\n" + rows.joined(separator: "\n") + "\n")
        try text.write(toFile: readme, atomically: true, encoding: .utf8)
        print("\(readme): \(rows.count - 2) rows from \(files.count) files")
    }

    static func cell(_ f: BenchFigure) -> String {
        if let p50 = f.p50Ms, let p95 = f.p95Ms, let p99 = f.p99Ms, let qps = f.queriesPerSecond {
            return String(format: "p50 %.2f / p95 %.2f / p99 %.2f ms, %.0f q/s", p50, p95, p99, qps)
                + (f.serverCPUPerQueryMs.map { String(format: ", server CPU %.3f ms/q", $0) } ?? "")
        }
        return String(format: "%.0f ev/s", f.eventsPerSecond ?? 0)
    }
}
