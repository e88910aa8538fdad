extension EventStore {
    /// One page of `query` in contract order: a lane's own order, or for several lanes the merged
    /// timeline (time, lane rank, tiebreak), built from per-lane index reads by a k-way merge.
    ///
    /// The merge lives here, not in each backend, so that both stores order timelines by the same
    /// code. Each lane is read in chunks that grow as they are consumed, so a page reads at most a
    /// few chunks more than it returns. A page bounded by ``EventQuery/maxBytes`` ends early,
    /// with a cursor.
    public func page(_ query: EventQuery) async throws(StoreError) -> EventPage {
        let want = query.limit + 1
        if query.lanes.count == 1 {
            let read = try await read(query.laneRead(query.lanes[0], after: query.after, limit: want))
            return EventPage(events: read.events, limit: query.limit, timebase: query.timebase, cut: read.reachedBytes)
        }
        var heads = [LaneCursor]()
        let firstChunk = Swift.min(want, Swift.max(64, want / query.lanes.count + 1))
        for lane in query.lanes {
            var cursor = LaneCursor(read: query.laneRead(lane, after: query.after, limit: firstChunk))
            try await cursor.refill(from: self, timebase: query.timebase, cap: want)
            if !cursor.isDone { heads.append(cursor) }
        }
        var out = [Event]()
        out.reserveCapacity(Swift.min(want, 4096))
        var bytes = 0
        var cut = false
        while out.count < want, !heads.isEmpty, !cut {
            var best = 0
            for k in 1..<heads.count where heads[k].headKey < heads[best].headKey { best = k }
            let event = heads[best].pop()
            if let maxBytes = query.maxBytes {
                bytes += event.preimageLength
                cut = bytes >= maxBytes
            }
            out.append(event)
            if heads[best].isBufferEmpty {
                try await heads[best].refill(from: self, timebase: query.timebase, cap: want)
                if heads[best].isDone { heads.remove(at: best) }
            }
        }
        return EventPage(events: out, limit: query.limit, timebase: query.timebase, cut: cut && !heads.isEmpty)
    }
}

extension EventPage {
    /// Trims an over-read of `limit + 1` events to `limit`, remembering that more follow; so do
    /// they after a page `cut` short by its byte bound.
    init(events: [Event], limit: Int, timebase: Timebase, cut: Bool) {
        if events.count > limit {
            let kept = Array(events.prefix(limit))
            self.init(events: kept, next: kept.last?.orderingKey(timebase))
        } else if cut, let last = events.last {
            self.init(events: events, next: last.orderingKey(timebase))
        } else {
            self.init(events: events, next: nil)
        }
    }
}

/// One lane's buffered position in a merge.
private struct LaneCursor {
    var read: LaneRead
    var buffer: [Event] = []
    var position = 0
    var exhausted = false
    var headKey: OrderingKey

    init(read: LaneRead) {
        self.read = read
        self.headKey = OrderingKey(time: .min, lane: read.lane, eventId: .zero)
    }

    var isBufferEmpty: Bool { position == buffer.count }
    var isDone: Bool { isBufferEmpty && exhausted }

    mutating func pop() -> Event {
        let event = buffer[position]
        position += 1
        if position < buffer.count { headKey = buffer[position].orderingKey(read.timebase) }
        return event
    }

    mutating func refill(from store: some EventStore, timebase: Timebase, cap: Int) async throws(StoreError) {
        guard !exhausted else { return }
        if let last = buffer.last { read.after = last.orderingKey(timebase) }
        let result = try await store.read(read)
        buffer = result.events
        position = 0
        exhausted = buffer.count < read.limit && !result.reachedBytes
        read.limit = Swift.min(cap, read.limit * 2)
        if let first = buffer.first { headKey = first.orderingKey(timebase) }
    }
}
