import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NovaCore
import Synchronization

/// A real WebSocket client of `GET /v1/stream` for tests: it records every message the server
/// sends, with its arrival time, while a script sends commands and waits for what it expects.
public final class StreamConnection: Sendable {
    public struct Message: Sendable {
        public var json: JSONValue
        public var at: ContinuousClock.Instant
        public var type: String { json["type"]?.stringValue ?? "" }
        /// The event's id, for `event` messages.
        public var eventId: String? { json["event"]?["eventId"]?.stringValue }
    }

    struct State {
        var messages: [Message] = []
        var closed = false
    }

    let outbound: WebSocketOutboundWriter
    let state = Mutex(State())
    /// Reading pauses while this is set (a deliberately slow client).
    let stalled = Mutex(false)

    init(outbound: WebSocketOutboundWriter) {
        self.outbound = outbound
    }

    public var messages: [Message] { state.withLock { $0.messages } }
    public var closedByServer: Bool { state.withLock { $0.closed } }
    public var eventIds: [String] { messages.compactMap(\.eventId) }

    public func send(_ json: String) async throws {
        try await outbound.write(.text(json))
    }

    public func stall(_ on: Bool) { stalled.withLock { $0 = on } }

    /// Waits until `done` holds for the messages so far; fails after `timeout`, or when the
    /// server closed without it holding.
    @discardableResult
    public func wait(
        for what: String, timeout: Duration = .seconds(20), _ done: @Sendable ([Message]) -> Bool
    ) async throws -> [Message] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (messages, closed) = state.withLock { ($0.messages, $0.closed) }
            if done(messages) { return messages }
            if closed { throw StreamTestError("stream closed before \(what); got \(messages.count) messages: \(messages.suffix(3).map(\.json))") }
            if ContinuousClock.now > deadline { throw StreamTestError("timed out waiting for \(what); got \(messages.count) messages: \(messages.suffix(3).map(\.json))") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits until the server has closed the stream (so that its close frame is what the
    /// connection returns, rather than this side's own close racing it).
    public func waitUntilClosedByServer(timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while !closedByServer {
            guard ContinuousClock.now < deadline else { throw StreamTestError("the server did not close the stream within \(timeout)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits for the `n`-th message of `type` (1-based).
    @discardableResult
    public func wait(forType type: String, count n: Int = 1, timeout: Duration = .seconds(20)) async throws -> [Message] {
        try await wait(for: "\(n) × \(type)", timeout: timeout) { $0.count { $0.type == type } >= n }
    }

    func record(_ text: String) {
        let json = (try? JSONParser.parse(text)) ?? .string(text)
        state.withLock { $0.messages.append(Message(json: json, at: .now)) }
    }

    func markClosed() { state.withLock { $0.closed = true } }
}

/// A counter shared by the tasks of a test.
public final class TestCounter: Sendable {
    private let count = Mutex(0)
    public init() {}
    public func add() { count.withLock { $0 += 1 } }
    public var value: Int { count.withLock { $0 } }
}

public struct StreamTestError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Opens `ws://127.0.0.1:<port>/v1/stream?<query>`, runs `script`, then closes (or returns when
/// the server closed and the script finished). Returns the server's close frame, if any.
@discardableResult
public func withStream(
    port: Int, query: String, token: String? = nil,
    _ script: @escaping @Sendable (StreamConnection) async throws -> Void
) async throws -> WebSocketCloseFrame? {
    var headers = HTTPFields()
    if let token { headers[.authorization] = "Bearer \(token)" }
    let failure = Mutex<(any Error)?>(nil)
    let close = try await WebSocketClient.connect(
        url: "ws://127.0.0.1:\(port)/v1/stream?\(query)", configuration: .init(maxFrameSize: 1 << 20, additionalHeaders: headers),
        logger: quietLogger
    ) { inbound, outbound, _ in
        let connection = StreamConnection(outbound: outbound)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    for try await message in inbound.messages(maxSize: 1 << 20) {
                        while connection.stalled.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
                        if case .text(let text) = message { connection.record(text) }
                    }
                } catch {}
                connection.markClosed()
            }
            do {
                try await script(connection)
            } catch {
                failure.withLock { $0 = error }
            }
            group.cancelAll()
        }
    }
    if let error = failure.withLock({ $0 }) { throw error }
    return close
}
