import NIOCore
import NIOWebSocket

/// A stream's text frames, sent in batches from just below the WebSocket frame encoder.
///
/// api.md asks for one frame per event, and hummingbird-websocket's writer takes one frame per
/// call: an async hand-off, an event-loop task, an encoder pass and a pending-write entry per
/// event. Here frames are encoded into one buffer and handed to the channel in one write per
/// batch; runs that ``CommitFeed`` framed once for every whole-scope stream join the batch as
/// they are, without a copy per client. Server frames are unmasked and `/v1/stream` negotiates no extension, so the encoding is
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
    /// Buffers that go ahead of `pending`: framed runs, sent as they are (no copy per client).
    private var queued: [ByteBuffer] = []
    private var queuedBytes = 0
    private var inFlight: EventLoopFuture<Void>?

    /// A batch is sent when it reaches this size; smaller ones on ``flush()``.
    static let batchBytes = 256 * 1024

    init(channel: any Channel) async throws {
        let loop = channel.eventLoop
        encoder = try await loop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self), eventLoop: loop)
        }.get()
    }

    var isEmpty: Bool { queued.isEmpty && pending.readableBytes == 0 }
    private var isFull: Bool { queuedBytes + pending.readableBytes >= Self.batchBytes }

    /// Adds one text frame; sends the batch when it is full.
    mutating func append(_ payload: ByteBuffer) async throws {
        Self.header(payload.readableBytes, into: &pending)
        pending.writeImmutableBuffer(payload)
        if isFull { try await flush() }
    }

    mutating func append(_ payload: [UInt8]) async throws {
        Self.header(payload.count, into: &pending)
        pending.writeBytes(payload)
        if isFull { try await flush() }
    }

    /// Adds frames that are already framed (``CommitFeed``'s runs), without copying them.
    mutating func append(framed: ByteBuffer) async throws {
        if pending.readableBytes > 0 {
            queued.append(pending)
            pending = ByteBuffer()
        }
        queued.append(framed)
        queuedBytes += framed.readableBytes
        if isFull { try await flush() }
    }

    /// Sends what is pending, once the batch before it has been written.
    mutating func flush() async throws {
        guard !isEmpty else { return }
        if let inFlight { try await inFlight.get() }
        var batch = queued
        if pending.readableBytes > 0 {
            batch.append(pending)
            pending = ByteBufferAllocator().buffer(capacity: pending.readableBytes)
        }
        queued.removeAll(keepingCapacity: true)
        queuedBytes = 0
        let encoder = encoder
        // Written in order, so the last one's completion is the batch's.
        inFlight = encoder.eventLoop.flatSubmit {
            for buffer in batch.dropLast() { encoder.value.write(NIOAny(buffer), promise: nil) }
            return encoder.value.writeAndFlush(NIOAny(batch[batch.count - 1]))
        }
    }

    /// Sends what is pending and waits until all of it was written.
    mutating func drain() async throws {
        try await flush()
        if let inFlight { try await inFlight.get() }
        inFlight = nil
    }

    /// FIN and the text opcode, then the payload length (RFC 6455, 5.2).
    /// The size of ``header(_:into:)``'s output for a message of `length` bytes.
    static func headerBytes(_ length: Int) -> Int {
        length < 126 ? 2 : length <= Int(UInt16.max) ? 4 : 10
    }

    static func header(_ length: Int, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0x81))
        if length < 126 {
            buffer.writeInteger(UInt8(length))
        } else if length <= Int(UInt16.max) {
            buffer.writeInteger(UInt8(126))
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(UInt8(127))
            buffer.writeInteger(UInt64(length))
        }
    }
}
