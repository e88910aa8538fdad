import Foundation
import GRDB
import NovaCore

extension SQLiteStore {
    /// A finished backup: where it is and what it holds.
    public struct Backup: Sendable {
        public var path: String
        /// The store's last `ingestSeq` at the moment of the copy: the file holds every event up to
        /// it and none after.
        public var lastSeq: Int64
        public var bytes: Int64
    }

    /// Copies the store, as it is at one moment, into a new file at `destination`, while appends
    /// go on (`nova backup`).
    ///
    /// SQLite's online backup runs inside one read transaction, so the copy is one snapshot and
    /// the WAL-mode writer is never blocked. The snapshot also keeps the copy from starting over:
    /// a stepped backup of a database that another connection writes restarts after each write,
    /// which under continuous ingest would never end. The copy is written under a temporary name
    /// beside `destination`, checked (`PRAGMA quick_check`), synced to disk and only then given
    /// its name, so that a backup file is whole or absent, also after a kill or a full disk.
    ///
    /// A copy holds this store's `storeId`. Restored onto a box whose hub has acknowledged more
    /// than it holds, its shipper notices and ships everything again under a new `storeId`, which
    /// the hub dedupes (sync.md), so nothing recorded after the restore is taken for a replay.
    public func backup(to destination: String, replacing: Bool, progress: @escaping @Sendable (_ copied: Int, _ total: Int) -> Void) async throws(StoreError) -> Backup {
        try Self.checkDestination(destination, source: path, replacing: replacing)
        let partial = destination + ".partial"
        Self.removeDatabaseFiles(partial)
        do {
            let copy = try DatabaseQueue(path: partial)
            let lastSeq = try await pool.read { db in
                let seq = try Int64.fetchOne(db, sql: "SELECT value FROM novaStore WHERE key = 'lastIngestSeq'") ?? 0
                try copy.writeWithoutTransaction { target in
                    try db.backup(to: target, pagesPerStep: 1_024) { step in
                        progress(step.completedPageCount, step.totalPageCount)
                    }
                }
                return seq
            }
            let check = try await copy.read { db in try String.fetchAll(db, sql: "PRAGMA quick_check") }
            try copy.close()
            guard check == ["ok"] else {
                throw StoreError(.internalError, "\(destination): the copy failed its check (\(check.prefix(3).joined(separator: "; "))); nothing was written")
            }
            try Self.syncToDisk(partial)
            try Self.give(partial, name: destination, replacing: replacing)
            let size = (try? FileManager.default.attributesOfItem(atPath: destination))?[.size] as? NSNumber
            return Backup(path: destination, lastSeq: lastSeq, bytes: size?.int64Value ?? 0)
        } catch {
            Self.removeDatabaseFiles(partial)
            if let error = error as? StoreError { throw error }
            throw Self.storeError(error, path: destination)
        }
    }

    /// Refuses a destination that would lose something: the store itself, an existing file not to
    /// be replaced, a directory, or a place that does not exist.
    static func checkDestination(_ destination: String, source: String, replacing: Bool) throws(StoreError) {
        let fm = FileManager.default
        let parent = (destination as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: parent.isEmpty ? "." : parent, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw StoreError(.invalidRequest, "\(destination): its directory \(parent) does not exist")
        }
        guard fm.fileExists(atPath: destination, isDirectory: &isDirectory) else { return }
        if isDirectory.boolValue {
            throw StoreError(.invalidRequest, "\(destination): is a directory; name the backup file")
        }
        var a = stat(), b = stat()
        if stat(destination, &a) == 0, stat(source, &b) == 0, a.st_dev == b.st_dev, a.st_ino == b.st_ino {
            throw StoreError(.invalidRequest, "\(destination): is the store itself; name another file")
        }
        if !replacing {
            throw StoreError(.invalidRequest, "\(destination): exists; name another file, or replace it with --overwrite")
        }
    }

    /// fsync of the file, so that its name is never given to pages still in the page cache only.
    static func syncToDisk(_ path: String) throws {
        guard let handle = FileHandle(forUpdatingAtPath: path) else {
            throw StoreError(.unavailable, "\(path): cannot be opened to sync it to disk")
        }
        defer { try? handle.close() }
        try handle.synchronize()
    }

    /// Gives the finished copy its name, atomically: `rename` when replacing, else `link`, which
    /// fails rather than replace a file that appeared meanwhile (where the file system has no
    /// hard links, a rename after a check). Then syncs the directory.
    static func give(_ partial: String, name: String, replacing: Bool) throws(StoreError) {
        if replacing {
            guard rename(partial, name) == 0 else {
                throw StoreError(.unavailable, "\(name): cannot be replaced (\(String(cString: strerror(errno))))")
            }
        } else if link(partial, name) == 0 {
            unlink(partial)
        } else {
            // File systems without hard links (FAT, exFAT: USB sticks) get a checked rename.
            let linkError = errno
            guard linkError != EEXIST, !FileManager.default.fileExists(atPath: name) else {
                throw StoreError(.unavailable, "\(name): exists (it appeared during the backup); the copy was not kept")
            }
            guard rename(partial, name) == 0 else {
                throw StoreError(.unavailable, "\(name): cannot be written (\(String(cString: strerror(errno)))); the copy was not kept")
            }
        }
        let parent = (name as NSString).deletingLastPathComponent
        let fd = Glibc.open(parent.isEmpty ? "." : parent, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            Glibc.close(fd)
        }
    }

    /// A database file and the journal files SQLite may have left beside it.
    static func removeDatabaseFiles(_ path: String) {
        for suffix in ["", "-journal", "-wal", "-shm"] { unlink(path + suffix) }
    }
}
