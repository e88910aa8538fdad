import NIOCore

/// Passes a stream connection's flushes on at the end of what its event loop has queued, not one
/// per frame. hummingbird-websocket writes and flushes every frame on its own (one event loop
/// task and one `writev` each), and a stream sends one frame per event; perf of a REWIND had the
/// server spending 23% of its samples in those flushes. When frames come faster than
/// the loop sends them, the ones queued meanwhile now leave in one system call; when they come
/// slower, each still leaves at once (its flush runs as the next task). Unflushed frames count
/// against the channel's write buffer like any others, so the writer's back-pressure still
/// bounds them; a close flushes first, so that a close frame is never dropped.
final class FlushCoalescingHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = Any

    private var flushPending = false

    func flush(context: ChannelHandlerContext) {
        guard !flushPending else { return }
        flushPending = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            guard handler.flushPending else { return }
            handler.flushPending = false
            context.flush()
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if flushPending {
            flushPending = false
            context.flush()
        }
        context.close(mode: mode, promise: promise)
    }
}
