import Foundation
import GRDB
import GRDBSQLite
import Logging
import NovaCore
import Synchronization

/// The edge store: one SQLite file in WAL mode through GRDB, one writer and a pool of readers.
///
/// ```swift
/// let store = try await SQLiteStore.open(path: "data/nova.db")
/// let result = try await store.append(events)
/// let page = try await store.page(EventQuery(scopeId: "site-a", range: from..<to))
/// ```
///
/// Opening never modifies a file that is not a NOVA store of a schema this binary knows: such a
/// file is inspected read-only first and refused with a message that names it.
public final class SQLiteStore: EventStore, Sendable {
    public let path: String
    /// Changes only through ``renewStoreId()``.
    public var storeId: String { identity.withLock { $0 } }
    let identity: Mutex<String>
    let pool: DatabasePool
    let logger: Logger

    public struct Options: Sendable {
        public var durability: NovaConfiguration.Durability = .normal
        /// Create the file (and its directory) when missing; tools that only read pass false.
        public var createIfMissing = true
        /// Open for reading only (tools such as `nova query` and `verify`).
        public var readOnly = false
        /// The disk budget: pages in use, in bytes, past which appends are refused (0: none).
        public var maxBytes: Int64 = 0

        public init(durability: NovaConfiguration.Durability = .normal, createIfMissing: Bool = true, readOnly: Bool = false) {
            self.durability = durability
            self.createIfMissing = createIfMissing
            self.readOnly = readOnly
        }
    }

    /// Appends are refused (StoreError `.full`, HTTP 507) once the pages in use reach this.
    let maxBytes: Int64

    private init(path: String, storeId: String, pool: DatabasePool, maxBytes: Int64, logger: Logger) {
        self.path = path
        self.maxBytes = maxBytes
        self.identity = Mutex(storeId)
        self.pool = pool
        self.logger = logger
    }

    /// Opens (and when new, creates) the store at `path`.
    public static func open(path: String, options: Options = Options(), logger: Logger = Logger(label: "nova.sqlite")) throws(StoreError) -> SQLiteStore {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        let exists = fm.fileExists(atPath: path, isDirectory: &isDirectory)
        if isDirectory.boolValue {
            throw StoreError(.unusable, "\(path): is a directory, not a SQLite database file")
        }
        if exists {
            try inspect(path: path)
        } else {
            guard options.createIfMissing, !options.readOnly else {
                throw StoreError(.unusable, "\(path): no such file")
            }
            let directory = (path as NSString).deletingLastPathComponent
            if !directory.isEmpty {
                do {
                    try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
                } catch {
                    throw StoreError(.unusable, "\(directory): cannot create the store's directory: \(error.localizedDescription)")
                }
            }
        }
        var config = Configuration()
        config.readonly = options.readOnly
        config.busyMode = .timeout(10)
        config.label = "nova"
        let synchronous = options.durability == .full ? "FULL" : "NORMAL"
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous); PRAGMA cache_size = -32768")
        }
        do {
            let pool = try DatabasePool(path: path, configuration: config)
            // GRDB turns on WAL for the writer after `prepareDatabase`, and sets synchronous=NORMAL
            // with it; `durability: full` must be set again on the writer, the one connection
            // whose commits it is about (found by the test of this setting).
            try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = \(synchronous)") }
            if !options.readOnly {
                try SQLiteSchema.migrator.migrate(pool)
            }
            let storeId = try pool.read { db -> String? in
                // Opened read-only, an empty file (no schema is created) has no table at all.
                guard try db.tableExists("novaStore") else { return nil }
                return try String.fetchOne(db, sql: "SELECT value FROM novaStore WHERE key = 'storeId'")
            }
            guard let storeId else {
                throw StoreError(.unusable, "\(path): not a NOVA store (empty, or no storeId); nova schema create or nova record makes one")
            }
            logger.info("store opened", metadata: ["path": "\(path)", "storeId": "\(storeId)", "durability": "\(synchronous)"])
            return SQLiteStore(path: path, storeId: storeId, pool: pool, maxBytes: options.maxBytes, logger: logger)
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    /// Refuses, without writing to it, a file that is not SQLite, is another application's SQLite
    /// database, or carries a schema newer than this binary's.
    private static func inspect(path: String) throws(StoreError) {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw StoreError(.unusable, "\(path): cannot be read (check its permissions)")
        }
        let header = [UInt8]((try? handle.read(upToCount: 20)) ?? Data())
        try? handle.close()
        if header.isEmpty { return }  // an empty file is a new database to SQLite
        guard header.starts(with: Array("SQLite format 3\0".utf8)) else {
            throw StoreError(.unusable, "\(path): not a SQLite database (its header is not SQLite's); refusing to touch it")
        }
        var config = Configuration()
        config.readonly = true
        do {
            let queue = try DatabaseQueue(path: inspectionPath(path, header: header), configuration: config)
            defer { try? queue.close() }
            try queue.read { db in
                let tables = try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
                if tables.isEmpty { return }
                guard tables.contains("novaStore") else {
                    throw StoreError(.unusable, "\(path): a SQLite database but not a NOVA store (tables: \(tables.prefix(5).joined(separator: ", "))); refusing to touch it")
                }
                if try SQLiteSchema.migrator.hasBeenSuperseded(db) {
                    let applied = try SQLiteSchema.migrator.appliedIdentifiers(db).sorted()
                    throw StoreError(.unusable, "\(path): schema is newer than this nova (applied: \(applied.joined(separator: ", ")); this binary knows up to v\(SQLiteSchema.version)); upgrade nova")
                }
                _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM novaStore")
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw storeError(error, path: path)
        }
    }

    /// Where to open `path` for inspection. A database in WAL mode (header bytes 18 and 19 are 2)
    /// gets `-wal` and `-shm` files beside it when opened, even read-only, and keeps them when it is
    /// refused. With no `-wal` the file alone holds the database, so it is opened as an immutable
    /// URI, which takes no locks and makes no files (where this SQLite reads URIs, as Debian's does).
    private static func inspectionPath(_ path: String, header: [UInt8]) -> String {
        guard header.count == 20, header[18] == 2, header[19] == 2,
              !FileManager.default.fileExists(atPath: path + "-wal"),
              sqlite3_compileoption_used("USE_URI") == 1,
              let encoded = path.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed)
        else { return path }
        return "file:\(encoded)?immutable=1"
    }

    /// Maps a SQLite failure to what callers act on; the message names the file.
    static func storeError(_ error: any Error, path: String) -> StoreError {
        guard let db = error as? DatabaseError else {
            return StoreError(.internalError, "\(path): \(error)")
        }
        let detail = db.message ?? "\(db.resultCode)"
        switch db.resultCode.primaryResultCode {
        case .SQLITE_NOTADB:
            return StoreError(.unusable, "\(path): not a SQLite database (\(detail))")
        case .SQLITE_CORRUPT:
            return StoreError(.unusable, "\(path): the database file is corrupt (\(detail)); restore it from a backup")
        case .SQLITE_FULL:
            return StoreError(.full, "\(path): the disk is full (\(detail))")
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return StoreError(.unavailable, "\(path): the database is busy (\(detail))")
        case .SQLITE_CANTOPEN, .SQLITE_PERM, .SQLITE_READONLY:
            return StoreError(.unusable, "\(path): cannot be opened for writing (\(detail))")
        case .SQLITE_IOERR:
            return StoreError(.unavailable, "\(path): I/O error (\(detail))")
        default:
            return StoreError(.internalError, "\(path): \(detail)")
        }
    }

    public var description: String { "SQLite store \(path) (schema v\(SQLiteSchema.version), storeId \(storeId))" }

    /// Checkpoints the WAL into the database file (so the file alone is a complete copy), then
    /// closes every connection.
    /// A close that takes seconds is reported: it cannot be cancelled, and a shutdown that
    /// outlasts its limits is ended by ServiceLifecycle with a crash (seen once at the end of a
    /// benchmark, cause not yet known).
    public func close() async {
        let started = ContinuousClock.now
        var frames = 0
        do {
            if !pool.configuration.readonly {
                frames = try await pool.writeWithoutTransaction { db in try db.checkpoint(.truncate).walFrameCount }
            }
            try pool.close()
        } catch {
            logger.error("closing the store failed", metadata: ["path": "\(path)", "error": "\(error)"])
        }
        let took = ContinuousClock.now - started
        if took > .seconds(2) {
            logger.warning("closing the store took long", metadata: ["path": "\(path)", "seconds": "\(took.components.seconds)", "walFrames": "\(frames)"])
        }
    }

    public func checkReady() async throws(StoreError) {
        do {
            try await pool.read { db in
                if try SQLiteSchema.migrator.hasBeenSuperseded(db) || !(try SQLiteSchema.migrator.hasCompletedMigrations(db)) {
                    throw StoreError(.unusable, "\(self.path): schema is not current")
                }
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    public func stats() async throws(StoreError) -> StoreStats {
        do {
            return try await pool.read { db in
                let rows = try Row.fetchAll(db, sql: """
                    SELECT scopeId, lane, count, firstCanonicalTruthTime, lastCanonicalTruthTime,
                           firstSourceTruthTime, lastSourceTruthTime
                    FROM laneStats ORDER BY scopeId
                    """)
                let lanes = rows.compactMap { row -> StoreStats.LaneStats? in
                    guard let lane = Lane(rawValue: row[1]) else { return nil }
                    return StoreStats.LaneStats(
                        scopeId: row[0], lane: lane, count: row[2],
                        firstCanonicalTruthTime: Timestamp(microseconds: row[3]), lastCanonicalTruthTime: Timestamp(microseconds: row[4]),
                        firstSourceTruthTime: Timestamp(microseconds: row[5]), lastSourceTruthTime: Timestamp(microseconds: row[6]))
                }.sorted { a, b in
                    a.scopeId == b.scopeId ? a.lane < b.lane : a.scopeId.utf8.lexicographicallyPrecedes(b.scopeId.utf8)
                }
                let pages = try Int64.fetchOne(db, sql: "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()") ?? 0
                let wal = try? FileManager.default.attributesOfItem(atPath: self.path + "-wal")
                let walBytes = (wal?[.size] as? NSNumber)?.int64Value ?? 0
                return StoreStats(lanes: lanes, storeBytes: pages + walBytes)
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    /// The schema's state, for `nova schema check`.
    public func schemaReport() async throws(StoreError) -> String {
        do {
            return try await pool.read { db in
                let applied = try SQLiteSchema.migrator.appliedIdentifiers(db).sorted()
                let created = try String.fetchOne(db, sql: "SELECT value FROM novaStore WHERE key = 'createdAt'") ?? "?"
                let lastSeq = try Int64.fetchOne(db, sql: "SELECT value FROM novaStore WHERE key = 'lastIngestSeq'") ?? 0
                return """
                    store: sqlite:\(self.path)
                    mode: sqlite (WAL)
                    schema: v\(SQLiteSchema.version) (migrations applied: \(applied.joined(separator: ", "))), current
                    storeId: \(self.storeId)
                    createdAt: \(created)
                    lastIngestSeq: \(lastSeq)
                    """
            }
        } catch {
            throw Self.storeError(error, path: path)
        }
    }

    /// `PRAGMA integrity_check` over the whole file: an empty answer means sound. Reads every
    /// page, so it takes a while on a large store; for after a crash or a power loss.
    public func integrityProblems() async throws(StoreError) -> [String] {
        do {
            let rows = try await pool.read { db in try String.fetchAll(db, sql: "PRAGMA integrity_check") }
            return rows == ["ok"] ? [] : rows
        } catch {
            throw Self.storeError(error, path: path)
        }
    }
}
