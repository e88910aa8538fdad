import HummingbirdCore
import Logging
import NIOCore

/// Closes a connection that stays idle for `idle` before its first request head is complete, and
/// one whose first head is no HTTP at all (after `idle`, since nothing will answer it).
///
/// hummingbird-websocket's upgradable HTTP/1 channel adds Hummingbird's idle timeout only once
/// the first request head has been parsed, so a connection that sent nothing, stopped inside its
/// head, or sent garbage was held open for good (found by a black-box audit: four such
/// connections were still open after 400 s). The timer restarts on every read while the head
/// comes in; once a head that looks like HTTP is complete it stops, so a slow answer is never cut
/// (the request is the server's to answer now), and Hummingbird's own timeout or the WebSocket
/// pings take over.
struct FirstRequestDeadline<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let idle: TimeAmount

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            // Added before the base's handlers (after TLS, if any), so it sees the request's bytes.
            try channel.pipeline.syncOperations.addHandler(IdleBeforeFirstRequest(idle: idle))
        }.flatMap { base.setup(channel: channel, logger: logger) }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

private final class IdleBeforeFirstRequest: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let idle: TimeAmount
    private var timer: Scheduled<Void>?
    /// The first request's bytes so far, until its head ends.
    private var head: [UInt8] = []
    private var done = false
    /// Past this much without the end of a head, reads no longer restart the timer.
    static let maxHead = 64 << 10

    init(idle: TimeAmount) {
        self.idle = idle
    }

    func handlerAdded(context: ChannelHandlerContext) { arm(context) }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !done {
            let from = Swift.max(0, head.count - 3)
            head.append(contentsOf: unwrapInboundIn(data).readableBytesView)
            if let end = Self.endOfHead(head, from: from) {
                done = true
                // A head that is no HTTP gets no answer: the timer, no longer restarted, ends it.
                if Self.looksLikeHTTP(head[..<end]) {
                    timer?.cancel()
                    timer = nil
                }
                head = []
            } else if head.count > Self.maxHead {
                done = true
                head = []
            } else {
                arm(context)
            }
        }
        context.fireChannelRead(data)
        if done, timer == nil { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
    }

    /// Anything written back (an answer, an upgrade) means the first request was dealt with.
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        timer?.cancel()
        timer = nil
        done = true
        context.write(data, promise: promise)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func arm(_ context: ChannelHandlerContext) {
        timer?.cancel()
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: idle) { channel.close(promise: nil) }
    }

    /// Where the blank line that ends a head starts, searching from `from`.
    static func endOfHead(_ bytes: [UInt8], from: Int) -> Int? {
        guard bytes.count >= 4, from <= bytes.count - 4 else { return nil }
        for i in from...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i
        }
        return nil
    }

    /// `METHOD target HTTP/1.x` on the first line.
    static func looksLikeHTTP(_ head: ArraySlice<UInt8>) -> Bool {
        let line = head.prefix { $0 != 13 }.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard line.count == 3, (1...16).contains(line[0].count), line[0].allSatisfy({ $0 >= 65 && $0 <= 90 }) else { return false }
        return line[2].starts(with: Array("HTTP/1.".utf8))
    }
}
