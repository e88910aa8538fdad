import Foundation
import NovaCore
@testable import NovaPostgres
import NovaTestSupport
import PostgresNIO
import Synchronization
import Testing

/// What only the PostgreSQL backend has: plans over partitions, schema refusal, partition
/// maintenance and retention.
@Suite struct PostgresStoreTests {
    static func frames(days: Int, perDay: Int, start: Timestamp, scope: String = "p") -> [Event] {
        (0..<(days * perDay)).map { k in
            let t = Timestamp(microseconds: start.microseconds + Int64(k / perDay) * 86_400_000_000 + Int64(k % perDay) * 1_000_000)
            return Event(scopeId: scope, sourceTruthTime: t, canonicalTruthTime: t,
                         fields: .raw(connectionId: "c\(k % 5)", sequence: Int64(k), bytes: [UInt8(k & 255)]))
        }
    }

    /// With realistic statistics, an ordered range read, as reads run it (prepared, with the
    /// generic plan the read pool keeps), is a (merge of) per-partition index scans and never a
    /// Sort node, for both timebases, with and without a cursor and a filter.
    @Test func orderedReadsUseIndexScansWithoutSort() async throws {
        let (store, cleanup) = try await TestPostgres.makeStore()
        defer { Task { await cleanup() } }
        let start = Timestamp(microseconds: 1_780_000_000_000_000)
        let frames = Self.frames(days: 3, perDay: 8000, start: start)
        let views = frames.enumerated().filter { $0.offset % 2 == 0 }.map { k, e in
            Event(scopeId: "p", sourceTruthTime: e.sourceTruthTime, canonicalTruthTime: e.canonicalTruthTime,
                  fields: .ui(viewId: "c\(k % 5)", payload: CanonicalPayload([JSONMember("k", .number(JSONNumber(Int64(k))))])))
        }
        let events = frames + views
        for batch in stride(from: 0, to: events.count, by: 5000) {
            _ = try await store.append(Array(events[batch..<min(events.count, batch + 5000)]))
        }
        _ = try await store.client.query("ANALYZE")
        let key = events[100].orderingKey(.canonical)
        for lane in [Lane.raw, .ui] {
            for timebase in Timebase.allCases {
                for keyset in [false, true] {
                    for filter in [nil, "c1"] as [String?] {
                        let read = LaneRead(
                            lane: lane, scopeId: "p", timebase: timebase, from: start,
                            to: Timestamp(microseconds: start.microseconds + 3 * 86_400_000_000), filter: filter,
                            after: keyset ? OrderingKey(time: key.time, lane: lane, connectionId: key.connectionId, sequence: key.sequence, eventId: key.eventId) : nil,
                            limit: 1000)
                        let plan = try await store.explain(read)
                        let text = plan.joined(separator: "\n")
                        // Plan nodes, not their properties (a Merge Append has a "Sort Key").
                        let nodes = plan.map { $0.trimmingCharacters(in: .whitespaces) }.map { $0.hasPrefix("->") ? String($0.dropFirst(2)).trimmingCharacters(in: .whitespaces) : $0 }
                        #expect(!nodes.contains { $0.hasPrefix("Sort  (") || $0.hasPrefix("Incremental Sort  (") }, "\(lane) \(timebase) keyset=\(keyset) filter=\(filter ?? "-"):\n\(text)")
                        #expect(text.contains("Index Scan") || text.contains("Index Only Scan"), "\(text)")
                        // As reads run it: the generic plan that the read pool's sessions keep.
                        let generic = try await Self.genericPlan(read, store: store)
                        let genericText = generic.joined(separator: "\n")
                        #expect(genericText.contains("= $1"), "a generic plan (parameters, not values):\n\(genericText)")
                        #expect(!generic.contains { $0.contains("Sort  (") }, "\(lane) \(timebase) keyset=\(keyset) filter=\(filter ?? "-"):\n\(genericText)")
                        #expect(genericText.contains("Index Scan") || genericText.contains("Index Only Scan"), "\(genericText)")
                        if timebase == .source {
                            #expect(text.contains("Merge Append"), "a merge of per-partition index scans:\n\(text)")
                        }
                    }
                }
            }
        }
    }

    /// Ordered reads get a pool of `pool.readMaxSize` connections (the minimum kept open never
    /// above it); everything else keeps `maxSize`.
    @Test func readsHaveAPoolOfTheirOwnSize() throws {
        var location = try PostgresLocation(locator: "postgres://nova@127.0.0.1:5432/nova", environment: ["NOVA_DB_PASSWORD": "x"])
        location.pool.minSize = 6
        location.pool.maxSize = 20
        location.pool.readMaxSize = 4
        #expect(location.clientConfiguration(reads: true).options.maximumConnections == 4)
        #expect(location.clientConfiguration(reads: true).options.minimumConnections == 4)
        #expect(location.clientConfiguration().options.maximumConnections == 20)
        #expect(location.clientConfiguration().options.minimumConnections == 6)
        #expect(NovaConfiguration.Pool().readMaxSize == max(2, 2 * ProcessInfo.processInfo.activeProcessorCount))
    }

    /// Reads prepare their statement on each read connection once, and outlive the sessions they
    /// were prepared in:
    /// - a session that lost its statements while its connection stayed open (`DEALLOCATE ALL`)
    ///   has them prepared again;
    /// - a read on a session that the server ends fails at once as unavailable (HTTP 503, to be
    ///   retried), not as an internal error and not after the store's 70 s bound (postgres-nio
    ///   loses a request written as its channel closes);
    /// - when the server ends every session, reads go on through new ones, prepared afresh, and
    ///   the ended connections are forgotten.
    @Test func readsOutliveTheSessionsTheirStatementsWerePreparedIn() async throws {
        let (store, cleanup) = try await TestPostgres.makeStore()
        defer { Task { await cleanup() } }
        let start = Timestamp(microseconds: 1_780_000_000_000_000)
        let frames = Self.frames(days: 1, perDay: 300, start: start)
        _ = try await store.append(frames)
        let read = LaneRead(lane: .raw, scopeId: "p", timebase: .canonical, from: start, to: Timestamp(microseconds: start.microseconds + 86_400_000_000), limit: 1000)
        let (prepared, client) = (store.preparedReads, store.client)
        let count: @Sendable (PostgresConnection) async throws -> Int = { conn in
            let n = Mutex(0)
            try await PostgresStore.forEachRow(of: read, on: conn, prepared: prepared) { _ in
                n.withLock { $0 += 1 }
                return true
            }
            return n.withLock { $0 }
        }

        let afterDiscard = try await store.connection(reads: true) { conn in
            #expect(try await count(conn) == frames.count)
            _ = try await conn.query("DEALLOCATE ALL", logger: store.logger).collect()
            return try await count(conn)
        }
        #expect(afterDiscard == frames.count, "prepared again after DEALLOCATE ALL")

        let preparedOn = prepared.connections
        let terminated = ContinuousClock.now
        do {
            _ = try await store.connection(reads: true) { conn in
                #expect(try await count(conn) == frames.count)
                let pid = try await conn.query("SELECT pg_backend_pid()", logger: store.logger).collect().first?.decode(Int32.self) ?? 0
                _ = try await client.query("SELECT pg_terminate_backend(\(pid))").collect()
                return try await count(conn)
            }
            Issue.record("a read on an ended session answered")
        } catch {
            let mapped = store.mapError(error)
            #expect(mapped.kind == .unavailable, "\(mapped) (from \(error))")
        }
        #expect(ContinuousClock.now - terminated < .seconds(30), "the read failed when its connection closed")
        // (Forgotten, so the pool has seen its end too and hands it out no more.)
        try await waitFor("the ended session to be forgotten", timeout: .seconds(30)) { prepared.connections < preparedOn }

        func readAll() async throws -> Int {
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<8 { group.addTask { try await store.read(read).events.count } }
                return try await group.reduce(0) { $0 + $1 }
            }
        }
        #expect(try await readAll() == 8 * frames.count)
        #expect(store.preparedReads.connections >= 1)

        _ = try await store.client.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'nova'")
        try await waitFor("the ended sessions to be forgotten", timeout: .seconds(30)) { store.preparedReads.connections == 0 }
        // The pool may hand out a connection before it notices its end: a read then fails as
        // unavailable (503, to be retried), and the next one runs on a live connection.
        var answered = 0
        for _ in 0..<20 where answered == 0 {
            do {
                answered = try await store.read(read).events.count
            } catch {
                #expect(error.kind == .unavailable, "\(error)")
            }
        }
        #expect(answered == frames.count)
        #expect(try await readAll() == 8 * frames.count)
        #expect(store.preparedReads.connections >= 1)
    }

    /// Each read shape finds its own statement in the table built once (by an index computed
    /// from the shape).
    @Test func everyReadShapeRunsItsOwnStatement() {
        var seen = Set<Int>()
        for lane in Lane.allCases {
            for timebase in Timebase.allCases {
                for keyset in [false, true] {
                    for filter in [false, true] {
                        for snapshot in [false, true] {
                            let read = LaneRead(
                                lane: lane, scopeId: "p", timebase: timebase, from: Timestamp(microseconds: 1), to: Timestamp(microseconds: 9),
                                filter: filter ? "f" : nil, after: keyset ? OrderingKey(time: Timestamp(microseconds: 5), lane: lane, connectionId: "c", sequence: 1, eventId: .zero) : nil,
                                limit: 10, throughSeq: snapshot ? 7 : nil)
                            let index = ReadShape.index(of: read)
                            let expected = ReadShape(lane: lane, timebase: timebase, keyset: keyset, filter: filter, snapshot: snapshot)
                            #expect(readShapes[index].sql == expected.sql)
                            seen.insert(index)
                        }
                    }
                }
            }
        }
        #expect(seen.count == readShapes.count)
    }

    /// `EXPLAIN EXECUTE` of `read`'s prepared statement on a read-pool session, after running it
    /// there. EXECUTE takes no parameters inside EXPLAIN, so the values are written out as
    /// literals here (test values, in the order of `PostgresStore.binds`).
    static func genericPlan(_ read: LaneRead, store: PostgresStore) async throws -> [String] {
        var values = ["'\(read.scopeId)'", "'\(read.to.rfc3339)'", "\(read.limit)"]
        if let after = read.effectiveAfter {
            values.append("'\(after.time.rfc3339)'")
            if after.lane == .raw { values += ["'\(after.connectionId)'", "\(after.sequence)"] }
            values.append("'\\x\(after.eventId.hex)'::bytea")
        } else {
            values.append("'\(read.from.rfc3339)'")
        }
        if let filter = read.filter { values.append("'\(filter)'") }
        let logger = store.logger
        let prepared = store.preparedReads
        let arguments = values.joined(separator: ", ")
        return try await store.connection(reads: true) { conn in
            try await PostgresStore.forEachRow(of: read, on: conn, prepared: prepared) { _ in false }
            // The statement's name is the driver's; the session lists it beside its SQL.
            let statement = readShapes[ReadShape.index(of: read)].sql
            let names = try await conn.query("SELECT name FROM pg_prepared_statements WHERE statement = \(statement)", logger: logger).collect()
            #expect(names.count == 1, "the read's statement is prepared once on its connection")
            let name = try #require(try names.first?.decode(String.self))
            let sql = "EXPLAIN EXECUTE \"\(name)\"(\(arguments))"
            var lines = [String]()
            for try await line in try await conn.query(PostgresQuery(unsafeSQL: sql), logger: logger).decode(String.self) { lines.append(line) }
            return lines
        }
    }

    /// The store's sessions carry both the shared settings (JIT off: with it, batches from about
    /// 8,000 events paid more for LLVM compilation than for running) and the store's own.
    @Test func sessionsRunWithoutJITAndWithTheStoresSettings() async throws {
        let (store, cleanup) = try await TestPostgres.makeStore()
        defer { Task { await cleanup() } }
        for setting in ["jit", "application_name", "TimeZone"] {
            let value = try await store.client.query(PostgresQuery(unsafeSQL: "SHOW \(setting)")).collect().first?.decode(String.self)
            #expect(value == ["jit": "off", "application_name": "nova", "TimeZone": "UTC"][setting], "\(setting)")
        }
    }

    @Test func aSchemaNewerThanTheBinaryIsRefused() async throws {
        let location = try await TestPostgres.createDatabase()
        let first = PostgresStore(location: location, logger: quietLogger)
        let running = Task { try await first.run() }
        try await first.waitUntilReady()
        _ = try await first.client.query(#"UPDATE "novaStore" SET "value" = '99' WHERE "key" = 'schemaVersion'"#)
        running.cancel()
        await awaitEnd(of: running, within: .seconds(30), "the first PostgresStore.run(), cancelled,")
        let second = PostgresStore(location: location, logger: quietLogger)
        let refused = Task { try await second.run() }
        do {
            try await second.waitUntilReady(timeout: .seconds(30))
            Issue.record("a newer schema was accepted")
        } catch {
            #expect(error.kind == .unusable)
            #expect(error.message.contains("schema v99 is newer than this nova"), "\(error)")
        }
        // run() ends with the refusal instead of retrying.
        guard case .failure(let ended) = await refused.result else {
            Issue.record("run() did not fail")
            return
        }
        #expect((ended as? StoreError)?.kind == .unusable)
        await TestPostgres.dropDatabase(location.database)
    }

    @Test func anotherApplicationsTablesAreNotTouched() async throws {
        let location = try await TestPostgres.createDatabase()
        defer { Task { await TestPostgres.dropDatabase(location.database) } }
        let probe = PostgresStore(location: location, createIfMissing: false, logger: quietLogger)
        let running = Task { try await probe.run() }
        do {
            try await probe.waitUntilReady(timeout: .seconds(30))
            Issue.record("opened a database without a NOVA store")
        } catch {
            #expect(error.message.contains("holds no NOVA store"), "\(error)")
        }
        running.cancel()
    }

    /// Create-ahead, then retention: old day partitions go, with their ids in `eventIndex` and their
    /// counts in the stats; recent data stays; a resend of a dropped event is new again.
    @Test func maintenanceCreatesAheadAndAppliesRetention() async throws {
        var created = try await TestPostgres.createDatabase()
        created.hypertable.retentionAfter = "10 days"
        let location = created
        let store = PostgresStore(location: location, maintainsPartitions: false, logger: quietLogger)
        let running = Task { try await store.run() }
        defer {
            running.cancel()
            Task { await TestPostgres.dropDatabase(location.database) }
        }
        try await store.waitUntilReady()
        let now = Timestamp(microseconds: 1_790_000_000_000_000)
        let old = Self.frames(days: 3, perDay: 10, start: Timestamp(microseconds: now.microseconds - 30 * 86_400_000_000), scope: "s")
        let recent = Self.frames(days: 2, perDay: 10, start: Timestamp(microseconds: now.microseconds - 2 * 86_400_000_000), scope: "s")
        _ = try await store.append(old + recent)
        let dropped = try await PartitionMaintenance(store: store).runOnce(now: now)
        #expect(dropped.filter { $0.hasPrefix("rawEvents_p") }.count == 3, "\(dropped)")
        #expect(dropped.filter { $0.hasPrefix("eventIndex_p") }.count == 3, "\(dropped)")
        let today = PartitionCatalog.day(of: now)
        for ahead in 0...3 {
            #expect(store.partitions.partitions(of: "rawEvents").contains { $0.day == today + Int64(ahead) })
        }
        let stats = try await store.stats()
        #expect(stats.lanes.first?.count == Int64(recent.count))
        #expect(stats.lanes.first?.firstCanonicalTruthTime == recent.first?.canonicalTruthTime)
        let all = try await store.page(EventQuery(scopeId: "s", range: Timestamp.min..<Timestamp.endOfTime))
        #expect(all.events == recent)
        let resent = try await store.append([old[0], recent[0]])
        #expect(resent.ingestSeqs.map { $0 != nil } == [true, false])
    }
}

/// TLS to PostgreSQL, against the test server (which `Scripts/postgres-test-cluster` starts with
/// the test certificate): libpq's `sslmode` names in locators and configuration.
@Suite struct PostgresTLSTests {
    /// `require` and `verify-full` connections are encrypted (the server's own view says so), and
    /// a whole store runs over `verify-full`.
    @Test func requireAndVerifyFullAreEncryptedAndAStoreRunsOverThem() async throws {
        let location = try await TestPostgres.createDatabase()
        defer { Task { await TestPostgres.dropDatabase(location.database) } }
        let base = "postgres://\(location.user)@\(location.host):\(location.port)/\(location.database)"
        let environment = ["NOVA_DB_PASSWORD": location.password ?? ""]
        for (query, encrypted) in [("", false), ("?sslmode=require", true), ("?sslmode=verify-full&sslrootcert=\(TestTLS.ca)", true)] {
            var tls = try PostgresLocation(locator: base + query, environment: environment)
            tls.pool.maxSize = 2
            let client = PostgresClient(configuration: tls.clientConfiguration(), backgroundLogger: quietLogger)
            let ssl = try await withThrowingTaskGroup(of: Bool?.self) { group in
                group.addTask {
                    await client.run()
                    return nil
                }
                let rows = try await client.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").collect()
                group.cancelAll()
                return try rows.first?.decode(Bool.self)
            }
            #expect(ssl == encrypted, "\(query)")
        }
        var verified = try PostgresLocation(locator: base + "?sslmode=verify-full&sslrootcert=\(TestTLS.ca)", environment: environment)
        verified.hypertable.retentionAfter = "1000 years"
        let store = PostgresStore(location: verified, maintainsPartitions: false, logger: quietLogger)
        let running = Task { try await store.run() }
        defer { running.cancel() }
        try await store.waitUntilReady(timeout: .seconds(60))
        let event = Event(scopeId: "tls", sourceTruthTime: Timestamp(microseconds: 1_780_000_000_000_000), canonicalTruthTime: Timestamp(microseconds: 1_780_000_000_000_000),
                          fields: .raw(connectionId: "c", sequence: 1, bytes: [1, 2, 3]))
        #expect(try await store.append([event]).accepted == 1)
        #expect(store.description.contains("sslmode=verify-full"))
    }

    /// A server whose certificate the configured authority did not sign is never trusted: the
    /// store stays not ready and says why.
    @Test func verifyFullRefusesAServerItsAuthorityDidNotSign() async throws {
        let (locator, password) = try TestPostgres.server()
        let location = try PostgresLocation(locator: locator + "?sslmode=verify-full&sslrootcert=\(TestTLS.otherCA)", environment: ["NOVA_DB_PASSWORD": password])
        let store = PostgresStore(location: location, createIfMissing: false, maintainsPartitions: false, logger: quietLogger)
        let running = Task { try await store.run() }
        defer { running.cancel() }
        // It keeps retrying (a certificate may be replaced) and says why meanwhile.
        let deadline = ContinuousClock.now + .seconds(60)
        var reason: String?
        while ContinuousClock.now < deadline {
            switch store.state.withLock({ $0 }) {
            case .ready: Issue.record("a server signed by another authority was trusted")
            case .starting(let lastError?): reason = lastError
            default: break
            }
            if reason != nil { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(reason?.contains("CERTIFICATE_VERIFY_FAILED") == true, "\(reason ?? "no reason within 60 s")")
    }

    @Test func locatorPartsLeftOutComeFromTheConfiguration() throws {
        var configuration = NovaConfiguration.Postgres()
        configuration.user = "hub"
        configuration.port = 6432
        configuration.database = "telemetry"
        let bare = try PostgresLocation(locator: "postgres://db", configuration: configuration, environment: [:])
        #expect(bare.description == "postgres://hub@db:6432/telemetry")
        let full = try PostgresLocation(locator: "postgresql://ops@db:5433/other", configuration: configuration, environment: [:])
        #expect(full.description == "postgres://ops@db:5433/other")
        #expect(try PostgresLocation(locator: "postgres://db/", environment: [:]).description == "postgres://nova@db:5432/nova")
    }

    @Test func badTLSLocatorsAreRefusedNamingTheParameter() throws {
        let cases: [(String, String)] = [
            ("postgres://nova@db/nova?sslmode=prefer", "sslmode must be disable, require or verify-full"),
            ("postgres://nova@db/nova?sslmode=require&sslrootcert=\(TestTLS.ca)", "sslrootcert is used only with sslmode=verify-full"),
            ("postgres://nova@db/nova?sslmode=verify-full&sslrootcert=/nonexistent.pem", "sslrootcert: cannot read certificates from /nonexistent.pem"),
            ("postgres://nova@db/nova?application_name=x", "unknown parameter application_name"),
        ]
        for (locator, message) in cases {
            #expect { try PostgresLocation(locator: locator) } throws: { error in
                "\(error)".contains(message)
            }
        }
    }
}
