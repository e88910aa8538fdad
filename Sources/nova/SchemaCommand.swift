import ArgumentParser
import NovaCore
import NovaPostgres
import NovaSQLite

/// `nova schema create|check`: make a store's schema current, or report on it.
struct SchemaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schema",
        abstract: "Create or check a store's schema.",
        subcommands: [Create.self, Check.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the store (or apply pending migrations) and print its schema report.")

        @Argument(help: "Store locator: sqlite:PATH or postgres://USER@HOST:PORT/DB.")
        var store: String

        func run() async throws {
            try await StoreLocator(store).withStore(create: true, logger: toolLogger()) { try await printReport($0) }
        }
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Report the store's schema version and mode without changing it; exit 1 if it is not current.")

        @Argument(help: "Store locator: sqlite:PATH or postgres://USER@HOST:PORT/DB.")
        var store: String
        @Flag(help: "SQLite: also read every page (PRAGMA integrity_check); exit 1 on any problem.")
        var integrity = false

        func validate() throws {
            // Refused before connecting, not after the whole report.
            if integrity, case .postgres = try StoreLocator(store) {
                throw ValidationError("--integrity: for sqlite: stores (PostgreSQL checks its own pages; see amcheck)")
            }
        }

        func run() async throws {
            try await StoreLocator(store).withStore(create: false, readOnly: true, logger: toolLogger()) { store in
                try await printReport(store)
                do {
                    try await store.checkReady()
                } catch {
                    throw CLIError("\(error)")
                }
                guard integrity else { return }
                guard let sqlite = store as? SQLiteStore else { return }
                let problems: [String]
                do {
                    problems = try await sqlite.integrityProblems()
                } catch {
                    throw CLIError("\(error)")
                }
                guard problems.isEmpty else {
                    throw CLIError("integrity: \(problems.count) problems:\n" + problems.prefix(50).joined(separator: "\n"))
                }
                print("integrity: ok")
            }
        }
    }
}

private func printReport(_ store: any EventStore) async throws {
    do {
        if let sqlite = store as? SQLiteStore {
            print(try await sqlite.schemaReport())
        } else if let postgres = store as? PostgresStore {
            print(try await postgres.schemaReport())
        } else {
            print(store.description)
        }
    } catch {
        throw CLIError(error.message)
    }
}
