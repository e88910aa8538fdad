import ArgumentParser

/// `nova`: the one executable of NOVA. Each subcommand lives in its own file; this is the only
/// place where the concrete stores and the server meet.
@main
struct Nova: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nova",
        abstract: "NOVA: a local-first telemetry recorder (edge) and hub.",
        subcommands: [
            RecordCommand.self, ServeCommand.self, QueryCommand.self, SchemaCommand.self, MigrateCommand.self, VerifyCommand.self, SyncCommand.self,
            SimulateCommand.self, BackupCommand.self,
            BenchCommand.self,
        ]
    )

    static func main() async {
        BenchLifetime.exitWithParentIfAsked()
        await main(nil)
    }
}

/// A failure the user can act on; ArgumentParser prints it as `Error: <message>` and exits 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
