import Foundation
import Logging
import NovaCore
import NovaSQLite

/// The store backends the conformance suite runs against. Each test gets a fresh, real store.
public enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgres

    public var testDescription: String { rawValue }

    /// A new empty store, and a closure that closes and removes it.
    public func makeStore() async throws -> (store: any EventStore, cleanup: @Sendable () async -> Void) {
        switch self {
        case .sqlite:
            let dir = try TemporaryDirectory("nova-store")
            let store = try SQLiteStore.open(path: dir.file("nova.db"), logger: quietLogger)
            return (store, {
                await store.close()
                dir.remove()
            })
        case .postgres:
            let (store, cleanup) = try await TestPostgres.makeStore()
            return (store, cleanup)
        }
    }
}

/// Tests log only warnings and errors.
public let quietLogger: Logger = {
    var logger = Logger(label: "nova.test")
    logger.logLevel = .warning
    return logger
}()

/// Swift Testing's protocol, restated so this module need not import Testing.
public protocol CustomTestStringConvertible {
    var testDescription: String { get }
}

extension EventStore {
    /// Every page of `query`, following cursors, checking that each page but the last is full
    /// (or, for a query bounded by bytes, holds at least its bound).
    public func allPages(_ query: EventQuery) async throws -> (events: [Event], pages: Int) {
        var q = query
        var out = [Event]()
        var pages = 0
        while true {
            let page = try await self.page(q)
            pages += 1
            out += page.events
            guard let next = page.next else { break }
            precondition(
                page.events.count == q.limit || q.maxBytes.map { max in page.events.reduce(0) { $0 + $1.preimageLength } >= max } == true,
                "a page before the last is short")
            q.after = next
        }
        return (out, pages)
    }
}
