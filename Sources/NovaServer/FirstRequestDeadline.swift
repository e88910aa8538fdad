import HummingbirdCore
import Logging
import NIOCore

/// Closes a connection that stays idle for `idle` before its first response: one that sends
/// nothing, stops inside its first request head, or sends bytes that are no HTTP at all.
///
/// hummingbird-websocket's upgradable HTTP/1 channel adds Hummingbird's idle timeout only once
/// the first request head has been parsed, so such connections were held open for good (found
/// by a black-box audit: four of them were still open after 400 s). The timer restarts on every
/// read, so a slow upload is not cut off; once anything is written back (a response, or the
/// upgrade to a WebSocket) Hummingbird's own timeout or the WebSocket pings take over.
struct FirstRequestDeadline<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let idle: TimeAmount

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            // Added before the base's handlers (after TLS, if any), so it sees the request's bytes.
            try channel.pipeline.syncOperations.addHandler(IdleBeforeFirstResponse(idle: idle))
        }.flatMap { base.setup(channel: channel, logger: logger) }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

private final class IdleBeforeFirstResponse: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let idle: TimeAmount
    private var timer: Scheduled<Void>?

    init(idle: TimeAmount) {
        self.idle = idle
    }

    func handlerAdded(context: ChannelHandlerContext) { arm(context) }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        arm(context)
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        timer?.cancel()
        timer = nil
        context.write(data, promise: promise)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func arm(_ context: ChannelHandlerContext) {
        timer?.cancel()
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: idle) { channel.close(promise: nil) }
    }
}
