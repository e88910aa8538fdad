import Synchronization

/// The receive times of the ingest requests not yet committed. An event without a canonical time
/// gets its request's receive time, then commits a little later; until it has, the recorder cannot
/// claim to be complete past that time. The shipper's `pendingFrom` (sync.md) takes the oldest
/// of these into account, so a site's `completeThrough` never runs ahead of a commit in flight.
public final class InFlightIngest: Sendable {
    private struct State {
        var next = 0
        var open = [Int: Timestamp]()
    }

    private let state = Mutex(State())

    public init() {}

    /// Registers a request received at `receivedAt`; pass the ticket to ``end(_:)`` once its
    /// append has committed or failed.
    public func begin(_ receivedAt: Timestamp) -> Int {
        state.withLock { s in
            s.next += 1
            s.open[s.next] = receivedAt
            return s.next
        }
    }

    public func end(_ ticket: Int) {
        state.withLock { _ = $0.open.removeValue(forKey: ticket) }
    }

    /// The receive time of the oldest request still in flight.
    public var oldest: Timestamp? {
        state.withLock { $0.open.values.min() }
    }
}
