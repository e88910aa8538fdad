import Hummingbird
import HummingbirdWebSocket
import NIOCore
import NIOWebSocket
import NovaCore
import Prometheus
import Synchronization

extension RecorderAPI {
    /// `GET /v1/stream`: LIVE and REWIND over WebSocket (api.md, Streaming).
    ///
    /// Bad parameters and bad messages are answered on the socket, as the contract asks: an
    /// `error` message naming the problem, then a close with 1008 (policy violation), 1003 for
    /// binary messages, 1009 for oversized ones, 1007 for invalid UTF-8, 1002 for broken
    /// fragmentation or an unmasked frame, 1011 when the store fails. Reading the client
    /// runs beside sending, so commands act mid-stream and a close is noticed at once.
    func stream(_ inbound: WebSocketInboundStream, _ outbound: WebSocketOutboundWriter, _ context: WebSocketRouterContext<NovaRequestContext>) async throws {
        if let refusal = context.requestContext.refusal {
            await StreamFailure(code: .policyViolation, message: refusal.message).report(on: outbound)
            return
        }
        let token = context.requestContext.tokenSlot ?? -1
        let maxStreams = configuration.server.maxStreamsPerToken
        guard streamAdmission.enter(token, limit: maxStreams) else {
            metrics.streamsRefused.increment()
            await StreamFailure(
                code: .policyViolation,
                message: "too many streams: this token has \(maxStreams) open (server.maxStreamsPerToken); close one first"
            ).report(on: outbound)
            return
        }
        defer { streamAdmission.leave(token) }
        metrics.streamClients.increment()
        defer { metrics.streamClients.decrement() }
        let maxMessage = configuration.server.maxStreamMessageBytes
        let request: StreamRequest
        do {
            request = try StreamRequest(context.request.uri)
        } catch {
            await StreamFailure(code: .policyViolation, message: error.message).report(on: outbound)
            return
        }
        let control = StreamControl()
        let channel = context.requestContext.channel
        try? await channel.eventLoop.submit {
            let decoder = try channel.pipeline.syncOperations.handler(type: ByteToMessageHandler<WebSocketFrameDecoder>.self)
            try channel.pipeline.syncOperations.addHandler(
                ClientFrameChecks(control: control, maxFrameBytes: Self.maxFrameBytes(message: maxMessage)), position: .after(decoder))
        }.get()
        let store = store
        let feed = feed
        let metrics = metrics
        let handOverDistance = handOverDistance
        let inFlight = inFlight
        let pageBytes = configuration.server.maxPageBytes
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await Self.readCommands(inbound, maxBytes: maxMessage, into: control)
                } catch {
                    // The connection failed; the sender finds out when it next writes.
                }
                control.close()
            }
            // The sender notices the reader's news (a command, a failure to report, the client's
            // close) within 250 ms at most; when it ends, so does the reader.
            do {
                var session = try await StreamSession(
                    request: request, store: store, feed: feed, control: control, outbound: outbound,
                    frames: try await StreamFrameWriter(channel: channel), metrics: metrics, inFlight: inFlight, handOverDistance: handOverDistance,
                    pageBytes: pageBytes)
                try await session.run()
            } catch let failure as StreamFailure {
                await failure.report(on: outbound)
            } catch let error as StoreError {
                await StreamFailure(code: .unexpectedServerError, message: "store: \(error.message)").report(on: outbound)
            } catch {
                // The connection went away mid-write, or the server is shutting down.
            }
            group.cancelAll()
        }
    }

    /// Reads the client's commands into `control` until it closes, or until one is refused.
    ///
    /// Messages are collated from frames here rather than by `messages(maxSize:)`, which closes
    /// an oversized message or one of invalid UTF-8 itself, with no word of why; here each
    /// refusal is an `error` naming it and its own close code (a single frame over the socket's
    /// frame limit, ``maxFrameBytes(message:)``, is refused by ``ClientFrameChecks``).
    static func readCommands(_ inbound: WebSocketInboundStream, maxBytes: Int, into control: StreamControl) async throws {
        var message = ByteBuffer()
        var kind: WebSocketDataFrame.Opcode?
        for try await frame in inbound {
            switch (frame.opcode, kind) {
            case (.text, nil), (.binary, nil):
                kind = frame.opcode
                message.clear()
            case (.continuation, .some): break
            case (.continuation, nil):
                return control.fail(.protocolError, "message: a continuation frame with no message to continue (RFC 6455 section 5.4)")
            default:
                return control.fail(.protocolError, "message: a new message began before the last one's final frame (RFC 6455 section 5.4)")
            }
            guard message.readableBytes + frame.data.readableBytes <= maxBytes else {
                return control.fail(.messageTooLarge, "message: larger than \(maxBytes) bytes (server.maxStreamMessageBytes)")
            }
            var data = frame.data
            message.writeBuffer(&data)
            guard frame.fin else { continue }
            defer { kind = nil }
            guard kind == .text else {
                return control.fail(.unacceptableData, "message: must be a JSON text message, not binary")
            }
            guard let text = String(validating: message.readableBytesView, as: UTF8.self) else {
                return control.fail(.dataInconsistentWithMessage, "message: not valid UTF-8")
            }
            do throws(APIError) {
                control.post(try StreamCommand(parsing: text))
            } catch {
                return control.fail(.policyViolation, error.message)
            }
        }
    }

    /// The WebSocket frame limit for a largest message of `message` bytes: well above it, so that
    /// a client sending a message over the limit in one frame is told so (``readCommands``), and
    /// still a bound on what one frame makes the decoder buffer.
    static func maxFrameBytes(message: Int) -> Int { max(1 << 16, 4 * message) }
}

/// Open streams per token, for `server.maxStreamsPerToken`.
final class StreamAdmission: Sendable {
    private let open = Mutex<[Int: Int]>([:])

    func enter(_ token: Int, limit: Int) -> Bool {
        open.withLock { open in
            guard open[token, default: 0] < limit else { return false }
            open[token, default: 0] += 1
            return true
        }
    }

    func leave(_ token: Int) {
        open.withLock { open in
            open[token, default: 1] -= 1
            if open[token] == 0 { open[token] = nil }
        }
    }
}

/// Fails a stream on a client frame that breaks a rule of the socket rather than of a message,
/// with an `error` naming it before the close:
/// - a frame without a mask, which RFC 6455 (section 5.1) says a server must not accept and which
///   swift-websocket takes as it is: the frame and any after it are dropped, and the stream ends
///   with 1002;
/// - a single frame over the socket's frame limit (``RecorderAPI/maxFrameBytes(message:)``),
///   which the frame decoder refuses before any handler sees it, and which the protocol handler
///   after this one would close with a bare 1009: the stream ends with 1009 and says why.
/// It joins the pipeline when the stream starts, so a frame the client sent before that moment
/// (right after the upgrade's answer) is not looked at.
final class ClientFrameChecks: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame
    let control: StreamControl
    let maxFrameBytes: Int
    private var failed = false

    init(control: StreamControl, maxFrameBytes: Int) {
        self.control = control
        self.maxFrameBytes = maxFrameBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        guard unwrapInboundIn(data).maskKey != nil else {
            failed = true
            control.fail(.protocolError, "frame: a client's frames must be masked (RFC 6455 section 5.1)")
            return
        }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is NIOWebSocketError || error is ByteToMessageDecoderError else { return context.fireErrorCaught(error) }
        // Once failed, the decoder's refusals of what still arrives are not news: the stream is
        // already ending with its reason.
        if failed { return }
        if let error = error as? NIOWebSocketError, error == .invalidFrameLength {
            failed = true
            control.fail(.messageTooLarge, "frame: larger than \(maxFrameBytes) bytes, the most one frame may hold here (4 × server.maxStreamMessageBytes, at least 64 KiB)")
            return
        }
        context.fireErrorCaught(error)
    }
}
