import ArgumentParser
import Foundation

/// `nova bench`: benchmarks that measure NOVA beside a baseline in the same run.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks, each beside a baseline measured in the same run (release builds).",
        subcommands: [BenchIngest.self, BenchQuery.self, BenchStream.self, BenchSync.self, BenchMigrate.self, BenchAll.self, BenchTable.self]
    )
}

/// Options every benchmark shares.
struct BenchOptions: ParsableArguments {
    @Option(help: "Write the results as JSON to this file.") var json: String?
    @Flag(help: "Run in a debug build anyway (figures are meaningless; for smoke tests).") var allowDebug = false

    func checkBuild() throws {
        #if DEBUG
        if !allowDebug {
            throw CLIError("nova bench measures release builds; build with `swift build -c release` (or pass --allow-debug for a smoke run)")
        }
        FileHandle.standardError.write(Data("WARNING: debug build: these figures say nothing about NOVA's speed\n".utf8))
        #endif
    }
}
