import Foundation
import GRDB
import NovaCore
@testable import NovaSQLite
import NovaTestSupport
import Testing

/// What only the SQLite backend has: query plans, and refusing files that are not its own.
@Suite struct SQLiteStoreTests {
    @Test func orderedReadsAreIndexRangeScansWithoutSort() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = try SQLiteStore.open(path: dir.file("nova.db"), logger: quietLogger)
        defer { Task { await store.close() } }
        let key = { (lane: Lane) in
            OrderingKey(time: Timestamp(microseconds: 5), lane: lane, connectionId: "c", sequence: 1, eventId: .zero)
        }
        for lane in Lane.allCases {
            for timebase in Timebase.allCases {
                for keyset in [false, true] {
                    for filter in [nil, "x"] as [String?] {
                        let read = LaneRead(
                            lane: lane, scopeId: "s", timebase: timebase, from: .min, to: .max, filter: filter,
                            after: keyset ? key(lane) : nil, limit: 10)
                        let plan = try await store.explainQueryPlan(read)
                        let text = plan.joined(separator: " | ")
                        #expect(plan.count == 1, "\(text)")
                        #expect(text.contains("SEARCH \(LaneSQL(lane).table) USING") && text.contains("INDEX \(LaneSQL(lane).indexName(timebase))"), "\(text)")
                        #expect(!text.contains("TEMP B-TREE") && !text.contains("SCAN"), "\(text)")
                    }
                }
            }
        }
    }

    /// `durability` reaches every connection: `full` is `synchronous=FULL` (a commit survives power
    /// loss, not only a crash of the process), `normal` is `synchronous=NORMAL`, both in WAL mode.
    @Test(arguments: [(NovaConfiguration.Durability.full, 2), (.normal, 1)])
    func durabilityIsTheSynchronousSettingOfEveryConnection(durability: NovaConfiguration.Durability, synchronous: Int) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = try SQLiteStore.open(path: dir.file("nova.db"), options: .init(durability: durability), logger: quietLogger)
        defer { Task { await store.close() } }
        let writer = try await store.pool.write { db in
            (try Int.fetchOne(db, sql: "PRAGMA synchronous"), try String.fetchOne(db, sql: "PRAGMA journal_mode"))
        }
        #expect(writer.0 == synchronous && writer.1 == "wal", "\(writer)")
        let reader = try await store.pool.read { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") }
        #expect(reader == synchronous)
    }

    func expectRefusedAndUntouched(_ path: String, mentioning phrase: String) throws {
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        let directory = (path as NSString).deletingLastPathComponent
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        do {
            let store = try SQLiteStore.open(path: path, logger: quietLogger)
            Issue.record("opened \(store)")
        } catch {
            #expect(error.kind == .unusable)
            #expect(error.message.hasPrefix(path), "\(error)")
            #expect(error.message.contains(phrase), "\(error)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == files, "no file is left beside it")
    }

    @Test func refusesAFileThatIsNotSQLite() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.file("nova.db")
        try Data((0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }).write(to: URL(fileURLWithPath: path))
        try expectRefusedAndUntouched(path, mentioning: "not a SQLite database")
        try Data("hello, I am a text file\n".utf8).write(to: URL(fileURLWithPath: path))
        try expectRefusedAndUntouched(path, mentioning: "not a SQLite database")
    }

    @Test func refusesACorruptStore() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.file("nova.db")
        let store = try SQLiteStore.open(path: path, logger: quietLogger)
        var gen = RandomEvents(seed: 9)
        _ = try await store.append(gen.events(500))
        await store.close()
        let wal = try FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? NSNumber
        #expect(wal?.intValue ?? 0 == 0, "closing checkpoints the WAL into the file")
        // Keep SQLite's header, garble the schema page and what follows.
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        for k in 100..<min(bytes.count, 9000) { bytes[k] = UInt8(truncatingIfNeeded: k &* 31) }
        try bytes.write(to: URL(fileURLWithPath: path))
        try expectRefusedAndUntouched(path, mentioning: "is corrupt")
    }

    @Test func refusesAnotherApplicationsDatabase() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.file("other.db")
        let other = try DatabaseQueue(path: path)
        try other.write { try $0.execute(sql: "CREATE TABLE accounts (id INTEGER)") }
        try other.close()
        try expectRefusedAndUntouched(path, mentioning: "not a NOVA store")
        // In WAL mode too: even a read-only open would leave -wal and -shm files beside it.
        let wal = try DatabaseQueue(path: path)
        try wal.writeWithoutTransaction { try $0.execute(sql: "PRAGMA journal_mode = WAL") }
        try wal.close()
        #expect(!FileManager.default.fileExists(atPath: path + "-wal"))
        try expectRefusedAndUntouched(path, mentioning: "not a NOVA store (tables: accounts)")
    }

    @Test func refusesASchemaNewerThanTheBinary() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.file("nova.db")
        await (try SQLiteStore.open(path: path, logger: quietLogger)).close()
        let later = try DatabaseQueue(path: path)
        try await later.write { try $0.execute(sql: "INSERT INTO grdb_migrations VALUES ('v99')") }
        try later.close()
        try expectRefusedAndUntouched(path, mentioning: "schema is newer than this nova")
    }

    @Test func readOnlyOpenDoesNotCreate() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        #expect(throws: StoreError.self) { try SQLiteStore.open(path: dir.file("missing.db"), options: .init(createIfMissing: false)) }
        #expect(!FileManager.default.fileExists(atPath: dir.file("missing.db")))
    }
}
