import Foundation
import GRDB
import NovaCore

/// The edge store's schema, as versioned GRDB migrations.
///
/// Every lane table has its `ingestSeq` as the rowid (append-only: the outbox is a rowid range
/// scan) and two ordering indexes, one per timebase, that match the contract's order column for
/// column, so ordered range reads are index range scans without a sort.
///
/// Dedupe needs no index of its own. The source-order index is UNIQUE and ends with `eventId`;
/// since `eventId` hashes the lane, the scope, the source time and (for raw) the connection and
/// sequence, two rows share that index key exactly when they share `eventId`, and two events with
/// one id cannot be in different lanes. So the index enforces the contract's global dedupe, and
/// because it leads with (scope, source time) it grows at its end like the data, instead of being
/// written all over as an index on a random 32-byte id would be.
enum SQLiteSchema {
    /// Bumped with every migration; `nova schema check` reports it.
    static let version = 3

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE novaStore (key TEXT PRIMARY KEY NOT NULL, value ANY NOT NULL) STRICT, WITHOUT ROWID;
                CREATE TABLE laneStats (
                    scopeId TEXT NOT NULL, lane TEXT NOT NULL, count INTEGER NOT NULL,
                    firstCanonicalTruthTime INTEGER NOT NULL, lastCanonicalTruthTime INTEGER NOT NULL,
                    firstSourceTruthTime INTEGER NOT NULL, lastSourceTruthTime INTEGER NOT NULL,
                    PRIMARY KEY (scopeId, lane)
                ) STRICT, WITHOUT ROWID;
                """)
            for lane in Lane.allCases {
                let t = LaneSQL(lane)
                let laneColumns = lane.fieldNames.map { name in
                    switch name {
                    case "sequence": "sequence INTEGER NOT NULL"
                    case "bytes": "bytes BLOB NOT NULL"
                    default: "\(name) TEXT NOT NULL"
                    }
                }
                try db.execute(sql: """
                    CREATE TABLE \(t.table) (
                        ingestSeq INTEGER PRIMARY KEY,
                        scopeId TEXT NOT NULL,
                        sourceTruthTime INTEGER NOT NULL,
                        canonicalTruthTime INTEGER NOT NULL,
                        eventId BLOB NOT NULL,
                        \(laneColumns.joined(separator: ",\n    "))
                    ) STRICT;
                    CREATE UNIQUE INDEX \(t.indexName(.source)) ON \(t.table) (scopeId, \(t.orderColumns(.source).joined(separator: ", ")));
                    CREATE INDEX \(t.indexName(.canonical)) ON \(t.table) (scopeId, \(t.orderColumns(.canonical).joined(separator: ", ")));
                    """)
            }
            try db.execute(
                sql: "INSERT INTO novaStore (key, value) VALUES ('format', 'nova'), ('storeId', ?), ('createdAt', ?), ('lastIngestSeq', 0)",
                arguments: [UUID().uuidString.lowercased(), Timestamp.now().rfc3339])
        }
        // v2: sync. The outbox's acknowledged position (a cache of the hub's truth), and the
        // watermarks of the sites that ship here when this store is a hub.
        migrator.registerMigration("v2") { db in
            try db.execute(sql: """
                INSERT INTO novaStore (key, value) VALUES ('syncAckedSeq', 0);
                CREATE TABLE syncSites (
                    siteId TEXT NOT NULL, storeId TEXT NOT NULL, ackedSeq INTEGER NOT NULL, lastEventId BLOB,
                    completeThrough INTEGER, pendingEvents INTEGER NOT NULL, lastContactAt INTEGER NOT NULL,
                    batchesApplied INTEGER NOT NULL, eventsApplied INTEGER NOT NULL,
                    PRIMARY KEY (siteId, storeId)
                ) STRICT, WITHOUT ROWID;
                """)
        }
        // v3: completeness per scope at a hub (sync.md): what each site last reported pending per
        // scope, and for its other scopes.
        migrator.registerMigration("v3") { db in
            try db.execute(sql: """
                ALTER TABLE syncSites ADD COLUMN otherScopesFrom INTEGER;
                CREATE TABLE syncSiteScopes (
                    siteId TEXT NOT NULL, storeId TEXT NOT NULL, scopeId TEXT NOT NULL, pendingFrom INTEGER NOT NULL,
                    PRIMARY KEY (siteId, storeId, scopeId)
                ) STRICT, WITHOUT ROWID;
                """)
        }
        return migrator
    }
}
