import ArgumentParser
import Foundation
import NovaCore
import NovaSQLite

/// `nova backup`: an online copy of an edge store into one file (api.md, Command line).
struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Online backup of an edge store to a file, while the recorder keeps recording.",
        discussion: """
            The copy is the store as it was at one moment (every event up to the ingestSeq printed, \
            none after), checked (PRAGMA quick_check) and synced to disk before it gets its name: a \
            backup file is whole or absent. To restore, stop the recorder and put the file in the \
            store's place. The events recorded after the backup are not in it; with sync on, the \
            shipper ships the copy's events again under a new storeId, and the hub dedupes them.
            Examples:
              nova backup sqlite:data/nova.db backups/nova-2026-11-28.db
              nova backup sqlite:data/nova.db backups/nova-latest.db --overwrite
            PostgreSQL hubs are backed up with PostgreSQL's own tools (pg_dump, pg_basebackup).
            """
    )

    @Argument(help: "The edge store: sqlite:PATH (the recorder may be running on it).") var store: String
    @Argument(help: "The backup file to write.") var destination: String
    @Flag(help: "Replace the backup file if it exists (atomically: the old one stays until the new one is complete).") var overwrite = false

    func run() async throws {
        guard case .sqlite(let path) = try StoreLocator(store) else {
            throw CLIError("\(store): nova backup copies an edge's SQLite store; back up PostgreSQL with pg_dump or pg_basebackup")
        }
        let target = destination.hasPrefix("sqlite:") ? String(destination.dropFirst("sqlite:".count)) : destination
        guard !target.isEmpty else { throw CLIError("destination: needs a file name") }
        let started = ContinuousClock.now
        let source: SQLiteStore
        do {
            source = try SQLiteStore.open(path: path, options: .init(createIfMissing: false, readOnly: true), logger: toolLogger())
        } catch {
            throw CLIError(error.message)
        }
        let status = StatusLine()
        let outcome: Result<SQLiteStore.Backup, StoreError>
        do {
            outcome = .success(try await source.backup(to: target, replacing: overwrite) { copied, total in
                status.update("backup: \(copied) of \(total) pages (\(total == 0 ? 100 : copied * 100 / total)%)")
            })
        } catch {
            outcome = .failure(error)
        }
        status.finish()
        await source.close()
        let backup: SQLiteStore.Backup
        switch outcome {
        case .success(let done): backup = done
        case .failure(let error): throw CLIError(error.message)
        }
        let took = String(format: "%.1f", (ContinuousClock.now - started).seconds)
        print("backup: \(path) → \(backup.path): every event up to ingestSeq \(backup.lastSeq), \(backup.bytes) bytes, \(took) s, check ok")
    }
}
