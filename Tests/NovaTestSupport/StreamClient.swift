import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOSSL
import NIOWebSocket
import NovaCore
import Synchronization

/// A real WebSocket client of `GET /v1/stream` for tests: it records every message the server
/// sends, with its arrival time, while a script sends commands and waits for what it expects.
public final class StreamConnection: Sendable {
    public struct Message: Sendable {
        public let text: String
        public let at: ContinuousClock.Instant
        public let type: String
        /// The event's id, for `event` messages.
        public let eventId: String?

        /// Parsed when asked for, not on arrival: twenty clients parsing every one of thousands of
        /// events kept the test process's threads (two, on a two-core machine) busy enough to
        /// delay the very server under test by seconds.
        public var json: JSONValue { (try? JSONParser.parse(text)) ?? .string(text) }

        init(text: String, at: ContinuousClock.Instant) {
            self.text = text
            self.at = at
            // The server writes `type` first and an event's `eventId` as a plain string; anything
            // else is parsed.
            if let type = Self.stringValue(of: "type", in: text, atStart: true) {
                self.type = type
                eventId = type == "event" ? (Self.stringValue(of: "eventId", in: text, atStart: false) ?? Self.parsedEventId(text)) : nil
            } else {
                let json = (try? JSONParser.parse(text)) ?? .string(text)
                type = json["type"]?.stringValue ?? ""
                eventId = json["event"]?["eventId"]?.stringValue
            }
        }

        static func parsedEventId(_ text: String) -> String? {
            (try? JSONParser.parse(text))?["event"]?["eventId"]?.stringValue
        }

        /// The value of `"name":"…"` when it holds no escape; at the very start of the object, or
        /// anywhere in it.
        static func stringValue(of name: String, in text: String, atStart: Bool) -> String? {
            let key = Array(((atStart ? "{\"" : "\"") + name + "\":\"").utf8)
            let bytes = Array(text.utf8)
            var start: Int?
            if atStart {
                if bytes.starts(with: key) { start = key.count }
            } else if bytes.count >= key.count {
                for i in 0...(bytes.count - key.count) where bytes[i] == key[0] && bytes[i..<(i + key.count)].elementsEqual(key) {
                    start = i + key.count
                    break
                }
            }
            guard let start, let end = bytes[start...].firstIndex(of: UInt8(ascii: "\"")) else { return nil }
            guard !bytes[start..<end].contains(UInt8(ascii: "\\")) else { return nil }
            return String(decoding: bytes[start..<end], as: UTF8.self)
        }
    }

    /// Counts are kept as messages arrive, so that twenty clients waiting for thousands of
    /// events each do not rescan their messages every few milliseconds (which, on a loaded
    /// machine, starved the very server they were waiting for).
    struct State {
        var messages: [Message] = []
        var eventIds: [String] = []
        var typeCounts: [String: Int] = [:]
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
    public var eventIds: [String] { state.withLock { $0.eventIds } }

    public func send(_ json: String) async throws {
        try await outbound.write(.text(json))
    }

    /// A binary message, which the contract does not allow.
    public func send(binary bytes: [UInt8]) async throws {
        try await outbound.write(.binary(ByteBuffer(bytes: bytes)))
    }

    /// One frame as it is, for the frames a client library would never send (invalid UTF-8,
    /// broken fragmentation); the client's handler masks it, as every client frame is.
    public func send(frame opcode: WebSocketOpcode, fin: Bool = true, _ bytes: [UInt8]) async throws {
        try await outbound.write(.custom(WebSocketFrame(fin: fin, opcode: opcode, data: ByteBuffer(bytes: bytes))))
    }

    public func stall(_ on: Bool) { stalled.withLock { $0 = on } }

    /// Waits until the server has closed the stream (so that its close frame is what the
    /// connection returns, rather than this side's own close racing it).
    public func waitUntilClosedByServer(timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while !closedByServer {
            guard ContinuousClock.now < deadline else { throw StreamTestError("the server did not close the stream within \(timeout)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits for the `n`-th message of `type` (1-based); fails after `timeout`, or when the
    /// server closed first.
    @discardableResult
    public func wait(forType type: String, count n: Int = 1, timeout: Duration = .seconds(20)) async throws -> [Message] {
        let what = type == "event" ? "\(n) events" : "\(n) × \(type)"
        let deadline = ContinuousClock.now + timeout
        while true {
            let (seen, closed) = state.withLock { ($0.typeCounts[type, default: 0], $0.closed) }
            if seen >= n { return messages }
            let failure = closed ? "stream closed before" : ContinuousClock.now > deadline ? "timed out waiting for" : nil
            if let failure {
                let tail = messages.suffix(3).map { $0.text.prefix(300) }
                throw StreamTestError("\(failure) \(what); got \(seen) of them, \(messages.count) messages in all, ending with: \(tail)", messagesSeen: messages.count)
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Waits for `n` `event` messages in all.
    @discardableResult
    public func wait(forEvents n: Int, timeout: Duration = .seconds(20)) async throws -> [Message] {
        try await wait(forType: "event", count: n, timeout: timeout)
    }

    func record(_ text: String) {
        let message = Message(text: text, at: .now)
        state.withLock { s in
            s.messages.append(message)
            s.typeCounts[message.type, default: 0] += 1
            if let id = message.eventId { s.eventIds.append(id) }
        }
    }

    func markClosed() { state.withLock { $0.closed = true } }
}

/// A counter shared by the tasks of a test.
public final class TestCounter: Sendable {
    private let count = Mutex(0)
    public init() {}
    public func add() { count.withLock { $0 += 1 } }
    public func set(_ value: Int) { count.withLock { $0 = value } }
    public var value: Int { count.withLock { $0 } }
}

public struct StreamTestError: Error, CustomStringConvertible {
    public var description: String
    /// For a wait that failed: how many messages the connection had seen.
    public var messagesSeen: Int?
    public init(_ description: String, messagesSeen: Int? = nil) {
        self.description = description
        self.messagesSeen = messagesSeen
    }
}

/// Opens `ws://127.0.0.1:<port>/v1/stream?<query>`, runs `script`, then closes (or returns when
/// the server closed and the script finished). Returns the server's close frame, if any.
///
/// `tls`: connect with `wss://` and this client configuration (its trust roots), naming the
/// server `localhost` (the client would send the address as SNI, which TLS forbids).
/// `connectTimeout`: how long the connection and upgrade may take before the script starts.
@discardableResult
public func withStream(
    port: Int, query: String, token: String? = nil, tls: TLSConfiguration? = nil, connectTimeout: Duration = .seconds(20),
    _ script: @escaping @Sendable (StreamConnection) async throws -> Void
) async throws -> WebSocketCloseFrame? {
    var headers = HTTPFields()
    if let token { headers[.authorization] = "Bearer \(token)" }
    let failure = Mutex<(any Error)?>(nil)
    let scriptStarted = TestCounter()
    let scriptEnded = TestCounter()
    let url = "\(tls == nil ? "ws" : "wss")://127.0.0.1:\(port)/v1/stream?\(query)"
    // Its own task, so that a close handshake that never ends (below) cannot hold the test.
    let clientEnded = TestCounter()
    let client = Task {
        defer { clientEnded.set(1) }
        return try await WebSocketClient.connect(
            url: url, configuration: .init(maxFrameSize: 1 << 20, additionalHeaders: headers, sniHostname: tls == nil ? nil : "localhost"),
            tlsConfiguration: tls, logger: quietLogger
        ) { inbound, outbound, _ in
            scriptStarted.set(1)
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
                scriptEnded.set(1)
                group.cancelAll()
            }
        }
    }
    // The script has as long as it takes; the close handshake after it, 20 s. swift-websocket's
    // client waits for the server's close frame (15 s at most, unless its task was cancelled) and
    // was seen to wait forever on a server that had died, its socket in CLOSE_WAIT.
    //
    // The upgrade is bounded too: a server that hangs up before answering it (a recorder killed
    // mid-handshake) leaves the client waiting for ever, since NIO's typed upgrade handler does
    // not fail its promise when the channel goes inactive. That froze a crash-campaign run.
    let connectBy = ContinuousClock.now + connectTimeout
    while scriptStarted.value == 0, clientEnded.value == 0 {
        guard ContinuousClock.now < connectBy, (try? await Task.sleep(for: .milliseconds(20))) != nil else {
            client.cancel()
            try Task.checkCancellation()
            throw StreamTestError("no WebSocket connection to \(url) within \(connectTimeout): the upgrade was not answered")
        }
    }
    let ended = await withTaskCancellationHandler {
        await awaitEnd(of: client, within: .seconds(20), once: { scriptEnded.value > 0 }, "a WebSocket client's close handshake (\(url))")
    } onCancel: {
        client.cancel()
    }
    if let error = failure.withLock({ $0 }) { throw error }
    return try ended?.get() ?? nil
}
