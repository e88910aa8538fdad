import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import NovaCore

/// The WebSocket clients of `nova bench stream`, which read each frame where it is decoded.
///
/// The benchmark's clients read every frame of 20 streams, 1,000,000 frames/s, on the same two
/// cores as the server. hummingbird-websocket's client hands each frame to an async sequence (a
/// task switch, allocations and generic metadata look-ups per frame): perf of LIVE to 5 clients
/// showed the benchmark's process using more of the machine than the server, about 2.8 µs per
/// frame, so 20 such clients would have needed more than both cores by themselves. Here NIO's
/// own WebSocket client upgrader and decoder feed a ``Reader`` on the event loop.
enum BenchStreamClient {
    /// Reads a stream's text frames on its event loop.
    protocol Reader: AnyObject {
        associatedtype Outcome: Sendable
        /// One text frame's payload; true when the reader has all it wants.
        func read(_ frame: UnsafeRawBufferPointer) -> Bool
        /// What was read; `failure` says why the stream ended early (a close, an error).
        func outcome(failure: String?) -> Outcome
    }

    /// Connects to `path` on 127.0.0.1:`port` and reads until the reader is done, the connection
    /// ends, or the task is cancelled (which closes it).
    static func run<R: Reader>(port: Int, path: String, reader makeReader: @escaping @Sendable () -> R) async throws -> R.Outcome {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let outcome = loop.makePromise(of: R.Outcome.self)
        let connected = loop.makePromise(of: (any Channel).self)
        do {
            let upgraded: EventLoopFuture<Bool> = try await ClientBootstrap(group: loop).connect(host: "127.0.0.1", port: port) { channel in
                connected.succeed(channel)
                return channel.eventLoop.makeCompletedFuture {
                    let upgrader = NIOTypedWebSocketClientUpgrader<Bool>(maxFrameSize: 1 << 20) { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(FrameHandler(reader: makeReader(), outcome: outcome))
                            return true
                        }
                    }
                    let head = HTTPRequestHead(
                        version: .http1_1, method: .GET, uri: path, headers: ["Host": "127.0.0.1:\(port)", "Content-Length": "0"])
                    var configuration = NIOUpgradableHTTPClientPipelineConfiguration(
                        upgradeConfiguration: .init(upgradeRequestHead: head, upgraders: [upgrader]) { channel in
                            channel.eventLoop.makeCompletedFuture { false }
                        })
                    // Frames that arrive in the same read as the 101 response (a LIVE stream's
                    // `caughtUp` comes at once) go on to the frame decoder; NIO's default drops
                    // them, which left the benchmark waiting for a `caughtUp` it had received.
                    configuration.leftOverBytesStrategy = .forwardBytes
                    return try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: configuration)
                }
            }
            guard try await upgraded.get() else { throw CLIError("the server refused the WebSocket upgrade of \(path)") }
        } catch {
            // Neither promise may be left unfulfilled (NIO reports a leaked promise).
            connected.fail(error)
            outcome.fail(error)
            throw error
        }
        // A wait on a future ignores cancellation: the benchmark's deadline closes the channel,
        // which ends the read with what arrived.
        return try await withTaskCancellationHandler {
            try await outcome.futureResult.get()
        } onCancel: {
            connected.futureResult.whenSuccess { $0.close(promise: nil) }
        }
    }

    /// Hands text frames to the reader, answers pings, and reports once.
    final class FrameHandler<R: Reader>: ChannelInboundHandler {
        typealias InboundIn = WebSocketFrame
        typealias OutboundOut = WebSocketFrame

        let reader: R
        let outcome: EventLoopPromise<R.Outcome>
        var done = false

        init(reader: R, outcome: EventLoopPromise<R.Outcome>) {
            self.reader = reader
            self.outcome = outcome
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            switch frame.opcode {
            case .text:
                if !done, frame.data.withUnsafeReadableBytes(reader.read) { finish(nil, context: context) }
            case .ping:
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.data)), promise: nil)
            case .connectionClose:
                finish("the server closed the stream", context: context)
            default:
                break
            }
        }

        /// Reports, then closes the connection (a close frame first, as a client should).
        private func finish(_ failure: String?, context: ChannelHandlerContext) {
            guard !done else { return }
            done = true
            outcome.succeed(reader.outcome(failure: failure))
            var reason = context.channel.allocator.buffer(capacity: 2)
            reason.write(webSocketErrorCode: .normalClosure)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: reason)), promise: nil)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            if !done {
                done = true
                outcome.succeed(reader.outcome(failure: "the connection closed"))
            }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            if !done {
                done = true
                outcome.succeed(reader.outcome(failure: "the stream failed: \(error)"))
            }
            context.close(promise: nil)
        }
    }

    /// A LIVE client: counts each `DeviceFrames` event by its index, per ingest batch.
    final class LiveCounter: Reader {
        struct Outcome: Sendable {
            /// Per ingest batch, when this client held all of its events.
            var complete: [ContinuousClock.Instant?]
            var received: Int
            var failure: String?
        }

        let total: Int
        let batch: Int
        let devices: Int
        let caughtUp: @Sendable () -> Void
        // Touched on the event loop only; unchecked, because the dynamic exclusivity checks of a
        // class's stored properties were a fifth of the clients' work (perf).
        @exclusivity(unchecked) var complete: [ContinuousClock.Instant?]
        @exclusivity(unchecked) var perBatch: [Int]
        @exclusivity(unchecked) var seen: [Bool]
        @exclusivity(unchecked) var received = 0
        @exclusivity(unchecked) var failure: String?

        init(total: Int, batch: Int, devices: Int, caughtUp: @escaping @Sendable () -> Void) {
            self.total = total
            self.batch = batch
            self.devices = devices
            self.caughtUp = caughtUp
            let batches = (total + batch - 1) / batch
            complete = Array(repeating: nil, count: batches)
            perBatch = Array(repeating: 0, count: batches)
            seen = Array(repeating: false, count: total)
        }

        func read(_ frame: UnsafeRawBufferPointer) -> Bool {
            guard FrameScan.starts(frame, with: FrameScan.event) else {
                if FrameScan.starts(frame, with: FrameScan.caughtUp) { caughtUp() }
                if FrameScan.starts(frame, with: FrameScan.error) {
                    failure = failure ?? "the server sent \(String(decoding: frame, as: UTF8.self))"
                    return true
                }
                return false
            }
            guard let k = FrameScan.frameIndex(frame, devices: devices), k < total else {
                failure = failure ?? "an event that the benchmark did not send"
                return false
            }
            if seen[k] {
                failure = failure ?? "event \(k) delivered twice"
                return false
            }
            seen[k] = true
            received += 1
            let b = k / batch
            perBatch[b] += 1
            if perBatch[b] == min(batch, total - b * batch) { complete[b] = .now }
            return received == total
        }

        func outcome(failure ended: String?) -> Outcome {
            let short = received == total ? nil : "received \(received) of \(total) events (\(ended ?? "stopped"))"
            return Outcome(complete: complete, received: received, failure: failure ?? short)
        }
    }

    /// A REWIND client: counts events until `end`, every tenth id checked against the order.
    final class RewindChecker: Reader {
        struct Outcome: Sendable {
            var count: Int
            var ended: Bool
            var failure: String?
        }

        let expected: [EventID]
        let progress: Progress
        @exclusivity(unchecked) var count = 0
        @exclusivity(unchecked) var ended = false
        @exclusivity(unchecked) var failure: String?

        init(expected: [EventID], progress: Progress) {
            self.expected = expected
            self.progress = progress
        }

        func read(_ frame: UnsafeRawBufferPointer) -> Bool {
            if FrameScan.starts(frame, with: FrameScan.end) {
                ended = true
                return true
            }
            guard FrameScan.starts(frame, with: FrameScan.event) else { return false }
            if count % 10 == 0, failure == nil {
                if count >= expected.count {
                    failure = "more events than were loaded"
                } else if FrameScan.find(frame, Array(#""eventId":"\#(expected[count].hex)""#.utf8), anchor: 6) == nil {
                    failure = "event \(count) is not the expected one (contract order broken)"
                }
            }
            count += 1
            if count % 10_000 == 0 { progress.update(count) }
            return false
        }

        func outcome(failure ended: String?) -> Outcome {
            Outcome(count: count, ended: self.ended, failure: failure)
        }
    }
}
