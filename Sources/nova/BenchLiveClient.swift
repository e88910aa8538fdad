import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// A LIVE client of `nova bench stream` that counts its frames on the event loop.
///
/// The benchmark's clients read every frame of 20 streams, 1,000,000 frames/s, on the same two
/// cores as the server. hummingbird-websocket's client hands each frame to an async sequence (a
/// task switch, allocations and generic metadata look-ups per frame): perf of LIVE to 5 clients
/// showed the benchmark's process using more of the machine than the server, about 2.8 µs per
/// frame, so 20 such clients would have needed more than both cores by themselves. Here NIO's
/// own WebSocket decoder feeds a handler that counts each frame where it is decoded.
enum BenchLiveClient {
    struct Outcome: Sendable {
        /// Per ingest batch, when this client held all of its events.
        var complete: [ContinuousClock.Instant?]
        var received: Int
        var failure: String?
    }

    /// Connects to `path` on 127.0.0.1:`port` and counts `DeviceFrames` events until all `total`
    /// arrived, the connection ends, or the task is cancelled (which closes it).
    static func run(
        port: Int, path: String, total: Int, batch: Int, devices: Int, caughtUp: @escaping @Sendable () -> Void
    ) async throws -> Outcome {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let outcome = loop.makePromise(of: Outcome.self)
        let connected = loop.makePromise(of: (any Channel).self)
        let upgraded: EventLoopFuture<Bool>
        do {
            upgraded = try await ClientBootstrap(group: loop).connect(host: "127.0.0.1", port: port) { channel in
            connected.succeed(channel)
            return channel.eventLoop.makeCompletedFuture {
                let upgrader = NIOTypedWebSocketClientUpgrader<Bool>(maxFrameSize: 1 << 20) { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        let counter = Counter(total: total, batch: batch, devices: devices, caughtUp: caughtUp, outcome: outcome)
                        try channel.pipeline.syncOperations.addHandler(counter)
                        return true
                    }
                }
                let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: ["Host": "127.0.0.1:\(port)", "Content-Length": "0"])
                return try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(
                    configuration: .init(upgradeConfiguration: .init(upgradeRequestHead: head, upgraders: [upgrader]) { channel in
                        channel.eventLoop.makeCompletedFuture { false }
                    }))
            }
            }
            guard try await upgraded.get() else { throw ChannelError.inappropriateOperationForState }
        } catch {
            // Neither promise may be left unfulfilled (NIO reports a leaked promise).
            connected.fail(error)
            outcome.fail(error)
            return Outcome(complete: [], received: 0, failure: "the WebSocket connection failed: \(error)")
        }
        // A wait on a future ignores cancellation: the benchmark's deadline closes the channel,
        // which ends the count with what arrived.
        return try await withTaskCancellationHandler {
            try await outcome.futureResult.get()
        } onCancel: {
            connected.futureResult.whenSuccess { $0.close(promise: nil) }
        }
    }

    /// Counts each `event` frame by its `DeviceFrames` index; answers pings; reports once.
    final class Counter: ChannelInboundHandler {
        typealias InboundIn = WebSocketFrame
        typealias OutboundOut = WebSocketFrame

        let total: Int
        let batch: Int
        let devices: Int
        let caughtUp: @Sendable () -> Void
        let outcome: EventLoopPromise<Outcome>
        // Touched on the event loop only; unchecked, because the dynamic exclusivity checks of a
        // class's stored properties were a fifth of the clients' work (perf).
        @exclusivity(unchecked) var complete: [ContinuousClock.Instant?]
        @exclusivity(unchecked) var perBatch: [Int]
        @exclusivity(unchecked) var seen: [Bool]
        @exclusivity(unchecked) var received = 0
        @exclusivity(unchecked) var failure: String?
        @exclusivity(unchecked) var done = false

        init(total: Int, batch: Int, devices: Int, caughtUp: @escaping @Sendable () -> Void, outcome: EventLoopPromise<Outcome>) {
            self.total = total
            self.batch = batch
            self.devices = devices
            self.caughtUp = caughtUp
            self.outcome = outcome
            let batches = (total + batch - 1) / batch
            complete = Array(repeating: nil, count: batches)
            perBatch = Array(repeating: 0, count: batches)
            seen = Array(repeating: false, count: total)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            switch frame.opcode {
            case .text:
                let (isEvent, index) = frame.data.withUnsafeReadableBytes { raw in
                    FrameScan.starts(raw, with: FrameScan.event) ? (true, FrameScan.frameIndex(raw, devices: devices)) : (false, nil)
                }
                if isEvent {
                    count(index, context: context)
                } else if frame.data.withUnsafeReadableBytes({ FrameScan.starts($0, with: FrameScan.caughtUp) }) {
                    caughtUp()
                }
            case .ping:
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.data)), promise: nil)
            case .connectionClose:
                finish(context: context)
            default:
                break
            }
        }

        private func count(_ index: Int?, context: ChannelHandlerContext) {
            guard let k = index, k < total else {
                failure = failure ?? "an event that the benchmark did not send"
                return
            }
            if seen[k] {
                failure = failure ?? "event \(k) delivered twice"
                return
            }
            seen[k] = true
            received += 1
            let b = k / batch
            perBatch[b] += 1
            if perBatch[b] == min(batch, total - b * batch) { complete[b] = .now }
            if received == total { finish(context: context) }
        }

        /// Reports the count and closes the connection (a close frame first, as a client should).
        private func finish(context: ChannelHandlerContext) {
            guard !done else { return }
            done = true
            outcome.succeed(Outcome(complete: complete, received: received, failure: failure ?? (received == total ? nil : "received \(received) of \(total) events")))
            var reason = context.channel.allocator.buffer(capacity: 2)
            reason.write(webSocketErrorCode: .normalClosure)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: reason)), promise: nil)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            if !done {
                done = true
                outcome.succeed(Outcome(complete: complete, received: received, failure: failure ?? "the stream closed after \(received) of \(total) events"))
            }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            failure = failure ?? "the stream failed: \(error)"
            context.close(promise: nil)
        }
    }
}
