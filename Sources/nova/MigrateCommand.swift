import ArgumentParser
import Foundation
import NovaCore
import NovaSync

/// `nova migrate`: backfill one store from another (the seed's options A and B), resumable, then
/// validated bucket by bucket.
///
/// It is sync without the network: the source's events are read in commit order and applied to
/// the target as outbox batches of a reserved site, so each batch and its checkpoint (that
/// site's watermark for the source's `storeId`) commit in one transaction in the target. A killed
/// run started again resumes at the watermark; a finished one finds nothing left to copy.
struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Copy every event of one store into another (SQLite to PostgreSQL/TimescaleDB): batched, resumable, validated.",
        discussion: """
            Reads the source through SQLite's online read path, so a recorder may keep writing to it \
            (option A; what it writes after the copy starts is left to a later run or to dual-write); \
            a stopped copy works the same way (option B). Every field is kept exactly: eventId, both \
            times to the microsecond, bytes and payloads. The checkpoint lives in the target (the \
            watermark of site "\(MigrateCommand.siteId)" for the source's storeId, in `GET /v1/sync/sites` \
            and `nova sync status --sites`), so running the same command again after a kill resumes, \
            and after success changes nothing. It ends with `nova verify`'s bucket-by-bucket \
            comparison of what it copied; exit status 1 on any difference, 2 when it could not \
            run or stopped (a refused source or target, a failure mid-copy: run it again to resume).
            Example:
              NOVA_DB_PASSWORD=... nova migrate --from sqlite:data/nova.db --to postgres://nova@db:5432/nova --batch-size 10000
            """
    )

    /// The site whose watermarks are migration checkpoints (shared with dual mode).
    static let siteId = ShadowWriter.siteId

    @Option(help: "The source store: sqlite:PATH (or postgres://…).") var from: String
    @Option(help: "The target store: postgres://USER@HOST:PORT/DB (password from NOVA_DB_PASSWORD), or sqlite:PATH.") var to: String
    @Option(help: "Events per batch (and per target transaction).") var batchSize = 10_000
    @Option(help: "Validation bucket width: 30s, 1m, 1h, 1d, …") var bucket = "1h"
    @Flag(help: "Skip the validation at the end.") var noVerify = false

    func validate() throws {
        guard (1...100_000).contains(batchSize) else { throw ValidationError("--batch-size: must be 1 to 100000, found \(batchSize)") }
        guard DigestRequest.parseBucket(bucket) != nil else { throw ValidationError("--bucket: must be a positive width up to 36500d, such as 1m or 1h, found \(bucket)") }
        guard from != to else { throw ValidationError("--from and --to: the same store") }
    }

    func run() async throws {
        let status = StatusLine()
        try await exitingTwoOnError(status) { try await migrate(status) }
    }

    private func migrate(_ status: StatusLine) async throws {
        let source = try StoreLocator(from)
        let target = try StoreLocator(to)
        let logger = toolLogger()
        try await source.withStore(create: false, readOnly: true, logger: logger) { src in
            // Read the source's positions and counts before the target is touched: a source
            // whose damage shows on these reads is refused with nothing written.
            do {
                _ = try await src.committedCounts(after: 0)
            } catch {
                throw CLIError("--from \(from): \((error as? StoreError)?.message ?? "\(error)")")
            }
            try await target.withStore(create: true, logger: logger) { dst in
                let startedAt = Timestamp.now()
                let copied = try await copy(from: src, to: dst, status: status)
                status.finish()
                print("copied: \(copied.events) events (\(copied.accepted) new in the target, \(copied.events - copied.accepted) already there) in "
                    + "\(String(format: "%.1f", copied.seconds)) s (\(Int(Double(copied.events) / max(copied.seconds, 0.001))) events/s); by lane: "
                    + Lane.allCases.map { "\($0.rawValue) \(copied.byLane[$0, default: 0])" }.joined(separator: ", "))
                print("checkpoint: \(Self.siteId) / \(copied.storeId) at \(copied.through) of \(copied.head)")
                if case .postgres = target, let oldest = try await src.stats().lanes.map(\.firstCanonicalTruthTime).min(),
                   oldest.microseconds < Timestamp.now().microseconds - 90 * 86_400_000_000 {
                    // The hub's retention (default 90 days) deletes older events when `nova serve`
                    // or dual mode first starts on this store; say so while it can still be set.
                    print("note: the oldest event copied is from \(oldest); set database.timescaledb.hypertable.retentionAfter to cover it "
                        + "before running nova serve or dual mode on this store, whose retention (default 90 days) deletes older events")
                }
                guard !noVerify else { return }
                var verification = Verification()
                verification.bucketMicros = DigestRequest.parseBucket(bucket)!
                verification.scopes = try await src.stats().lanes.map(\.scopeId).uniqued()
                if try await src.outboxState().lastSeq != copied.head {
                    // A recorder writes to the source: what it committed after the copy started
                    // is the next run's (or dual-write's), so only whole buckets before it count.
                    verification.clipEnd = Timestamp(microseconds: DigestRequest.bucketStart(startedAt.microseconds, width: verification.bucketMicros))
                    print("the source grew during the copy: validating the buckets before \(verification.clipEnd!); run again to copy the rest")
                }
                let results = try await verification.run(DigestSide(store: src, name: from), DigestSide(store: dst, name: to)) {
                    status.update("validate: \($0)")
                }
                status.finish()
                if report(results, left: from, right: to, bucket: bucket) > 0 { throw ExitCode(1) }
            }
        }
    }

    struct Copied {
        var storeId: String
        var events = 0
        /// Of `events`, those the target did not hold yet.
        var accepted = 0
        var byLane = [Lane: Int]()
        var through: Int64 = 0
        var head: Int64 = 0
        var seconds = 0.0
    }

    /// Batches applied at once: each inserts its dedupe entries while the one before it commits
    /// (``EventStore/applySync(_:turn:)``), and the source is read ahead meanwhile.
    static let window = 3

    private struct InFlight {
        var events: Int
        var byLane: [Lane: Int]
        var lastSeq: Int64
        var task: Task<(watermark: SyncWatermark, accepted: Int), any Error>
    }

    /// Copies the source's events after the target's checkpoint, through the source's head as it
    /// was when the copy started. Batch i+1 takes the target's watermark only after batch i is
    /// applied (or after the sequencer's patience), so the checkpoint advances in order; a batch
    /// after a failed one finds a gap and applies nothing.
    private func copy(from src: any EventStore, to dst: any EventStore, status: StatusLine) async throws -> Copied {
        let outbox = try await src.outboxState()
        var copied = Copied(storeId: outbox.storeId, head: outbox.lastSeq)
        var acked = try await dst.syncWatermark(siteId: Self.siteId, storeId: outbox.storeId).ackedSeq
        if acked > 0 { print("resuming after position \(acked) of \(outbox.lastSeq) (checkpoint in the target)") }
        let resumedAt = acked
        // Per lane, what this run has to copy: for the progress line's counts and ETAs.
        var toCopy = try await src.committedCounts(after: acked)
        if acked < outbox.lastSeq {
            for (lane, later) in try await src.committedCounts(after: outbox.lastSeq) { toCopy[lane, default: 0] -= later }
        }
        let started = ContinuousClock.now
        var read = acked
        // Bounded: a batch whose predecessor is stuck (say, behind a lock a later batch holds)
        // goes ahead after this, finds a gap and rolls back, which frees what the other waits for.
        let sequencer = SyncSequencer(patience: .seconds(10))
        var inFlight = [InFlight]()
        defer { for batch in inFlight { batch.task.cancel() } }
        while true {
            while inFlight.count < Self.window, read < outbox.lastSeq {
                // Bounded by bytes too: a window of batches of large events stays in memory.
                let events = try await src.committed(after: read, limit: batchSize, maxBytes: 16 << 20).filter { $0.seq <= outbox.lastSeq }
                guard let last = events.last else { break }
                let batch = SyncBatch(
                    siteId: Self.siteId, storeId: outbox.storeId, firstSeq: read + 1, lastSeq: last.seq, pendingFrom: nil,
                    outboxSize: outbox.lastSeq - last.seq, events: events)
                var byLane = [Lane: Int]()
                for e in events { byLane[e.event.lane, default: 0] += 1 }
                inFlight.append(InFlight(
                    events: events.count, byLane: byLane, lastSeq: last.seq,
                    task: Task {
                        let outcome = try await dst.applySync(batch) {
                            await sequencer.waitTurn(batch) { try? await dst.syncWatermark(siteId: batch.siteId, storeId: batch.storeId).ackedSeq }
                        }.outcome
                        sequencer.finished(batch, ackedSeq: outcome.watermark.ackedSeq)
                        if case .applied(_, let accepted, _) = outcome { return (outcome.watermark, accepted) }
                        return (outcome.watermark, 0)
                    }))
                read = last.seq
            }
            guard !inFlight.isEmpty else { break }
            let done = inFlight.removeFirst()
            let watermark: SyncWatermark
            do {
                let applied = try await done.task.value
                watermark = applied.watermark
                if watermark.ackedSeq >= done.lastSeq { copied.accepted += applied.accepted }
            } catch {
                throw CLIError("\((error as? StoreError)?.message ?? "\(error)"); the target is consistent up to its checkpoint (\(acked)): run the same command again to resume")
            }
            if watermark.ackedSeq >= done.lastSeq {
                copied.events += done.events
                copied.byLane.merge(done.byLane, uniquingKeysWith: +)
            } else {
                // Not applied (another run moved the checkpoint): the batches after it find gaps;
                // read again from the checkpoint.
                for batch in inFlight { _ = await batch.task.result }
                inFlight = []
                read = watermark.ackedSeq
            }
            acked = watermark.ackedSeq
            let elapsed = max((ContinuousClock.now - started).seconds, 0.001)
            let rate = Double(acked - resumedAt) / elapsed
            let eta = rate > 0 ? Double(outbox.lastSeq - acked) / rate : 0
            status.update("copy: \(acked)/\(outbox.lastSeq) (\(outbox.lastSeq > 0 ? acked * 100 / outbox.lastSeq : 100)%), \(Int(rate)) events/s, ETA \(Int(eta)) s; "
                + Lane.allCases.map { lane in
                    let (done, total) = (copied.byLane[lane, default: 0], Int(toCopy[lane, default: 0]))
                    let laneRate = Double(done) / elapsed
                    return "\(lane.rawValue) \(done)/\(total)" + (done < total && laneRate > 0 ? " ETA \(Int(Double(total - done) / laneRate)) s" : "")
                }.joined(separator: ", "))
        }
        copied.through = acked
        copied.seconds = (ContinuousClock.now - started).seconds
        return copied
    }
}
