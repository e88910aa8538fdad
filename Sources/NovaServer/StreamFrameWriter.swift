import NIOCore
import NIOWebSocket

/// A stream's text frames, sent in batches from just below the WebSocket frame encoder.
///
/// api.md asks for one frame per event, and hummingbird-websocket's writer takes one frame per
/// call: an async hand-off, an event-loop task, an encoder pass and a pending-write entry per
/// event. Here frames are encoded into one buffer and handed to the channel in one write per
/// batch. Server frames are unmasked and `/v1/stream` negotiates no extension, so the encoding is
/// the two-to-ten-byte header and the payload. The write goes out from the encoder's own context,
/// so whatever lies below it (TLS) still applies, and frames the WebSocket handler writes itself
/// (pongs, its close) fall between batches, never inside one.
///
/// One batch is in flight at a time: the next waits until the one before was written to the
/// socket, which bounds a slow reader's memory as the writer's back-pressure did. Everything
/// appended must be flushed before anything else is written through the handler's own writer
/// (an `error` message, a close): ``flush()`` hands the batch to the event loop, and that
/// writer's frame reaches the loop after it (or waits for writability, after it too).
struct StreamFrameWriter {
    private let encoder: NIOLoopBound<ChannelHandlerContext>
    private var pending = ByteBuffer()
    private var inFlight: EventLoopFuture<Void>?

    /// A batch is sent when it reaches this size; smaller ones on ``flush()``.
    static let batchBytes = 256 * 1024

    init(channel: any Channel) async throws {
        let loop = channel.eventLoop
        encoder = try await loop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self), eventLoop: loop)
        }.get()
    }

    var isEmpty: Bool { pending.readableBytes == 0 }

    /// Adds one text frame; sends the batch when it is full.
    mutating func append(_ payload: ByteBuffer) async throws {
        header(payload.readableBytes)
        pending.writeImmutableBuffer(payload)
        if pending.readableBytes >= Self.batchBytes { try await flush() }
    }

    mutating func append(_ payload: [UInt8]) async throws {
        header(payload.count)
        pending.writeBytes(payload)
        if pending.readableBytes >= Self.batchBytes { try await flush() }
    }

    /// Sends what is pending, once the batch before it has been written.
    mutating func flush() async throws {
        guard !isEmpty else { return }
        if let inFlight { try await inFlight.get() }
        let batch = pending
        pending = ByteBufferAllocator().buffer(capacity: batch.readableBytes)
        let encoder = encoder
        inFlight = encoder.eventLoop.flatSubmit { encoder.value.writeAndFlush(NIOAny(batch)) }
    }

    /// Sends what is pending and waits until all of it was written.
    mutating func drain() async throws {
        try await flush()
        if let inFlight { try await inFlight.get() }
        inFlight = nil
    }

    /// FIN and the text opcode, then the payload length (RFC 6455, 5.2).
    private mutating func header(_ length: Int) {
        pending.writeInteger(UInt8(0x81))
        if length < 126 {
            pending.writeInteger(UInt8(length))
        } else if length <= Int(UInt16.max) {
            pending.writeInteger(UInt8(126))
            pending.writeInteger(UInt16(length))
        } else {
            pending.writeInteger(UInt8(127))
            pending.writeInteger(UInt64(length))
        }
    }
}
