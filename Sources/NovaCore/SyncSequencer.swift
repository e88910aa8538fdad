import Synchronization

/// Orders the batches of a site that are applied at once: a batch that starts right after one
/// still being applied waits for it (up to `patience`) instead of being answered 409 because it
/// overtook it (an edge keeps two batches in flight, on two connections; `nova migrate` keeps a
/// window). It waits as the store's `turn`, so a PostgreSQL store has inserted the batch's
/// dedupe entries by then. Only an ordering aid: the store's watermark still decides, so a batch
/// whose predecessor never comes is answered as sync.md says (409, and the edge resumes from the
/// watermark). Another hub process's progress is seen by re-reading the watermark while waiting.
public final class SyncSequencer: Sendable {
    private struct Key: Hashable {
        var siteId: String
        var storeId: String
    }

    /// Per (siteId, storeId): the highest watermark seen, in this process or in the store.
    private let through = Mutex([Key: Int64]())
    public let patience: Duration

    public init(patience: Duration = .seconds(2)) {
        self.patience = patience
    }

    /// Returns once the batch is next (its predecessor is applied) or after `patience`.
    public func waitTurn(_ batch: SyncBatch, watermark: () async -> Int64?) async {
        guard batch.kind == .outbox else { return }
        let key = Key(siteId: batch.siteId, storeId: batch.storeId)
        let needed = batch.firstSeq - 1
        if through.withLock({ $0[key] }) == nil, let w = await watermark() { advance(key, to: w) }
        let deadline = ContinuousClock.now + patience
        var lastRead = ContinuousClock.now
        while (through.withLock { $0[key] ?? 0 }) < needed, ContinuousClock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(2))
            if ContinuousClock.now - lastRead > .milliseconds(50), let w = await watermark() {
                lastRead = .now
                advance(key, to: w)
            }
        }
    }

    /// Records the watermark after a batch (applied, replayed or refused as a gap).
    public func finished(_ batch: SyncBatch, ackedSeq: Int64) {
        guard batch.kind == .outbox else { return }
        advance(Key(siteId: batch.siteId, storeId: batch.storeId), to: ackedSeq)
    }

    private func advance(_ key: Key, to seq: Int64) {
        through.withLock { $0[key] = Swift.max($0[key] ?? 0, seq) }
    }
}
