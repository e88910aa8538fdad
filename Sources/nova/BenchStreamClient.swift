import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import NovaCore

/// The WebSocket clients of `nova bench stream`, which read each frame where it arrives.
///
/// The benchmark's clients read every frame of 20 streams, 1,000,000 frames/s, on the same two
/// cores as the server. hummingbird-websocket's client hands each frame to an async sequence (a
/// task switch, allocations and generic metadata look-ups per frame): perf of LIVE to 5 clients
/// showed the benchmark's process using more of the machine than the server. NIO's upgrader and
/// frame decoder on the event loop were cheaper, yet still about 40% of the machine in a LIVE
/// run to PostgreSQL (perf: more than the server's 22%), mostly per-frame costs: a
/// `WebSocketFrame` and an `NIOAny` per frame, and the unspecialized generic code of
/// `ByteToMessageHandler` looking up type metadata. So the client speaks the protocol on the
/// bytes as they arrive: the upgrade request, the 101 answer, then frame headers (a server's
/// frames are unmasked: two to ten bytes, then the payload), each text frame's payload handed to
/// the reader where it lies in the read buffer.
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
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: loop).channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RawStreamHandler(reader: makeReader(), request: Self.upgrade(path, port: port), outcome: outcome))
                }
            }.connect(host: "127.0.0.1", port: port).get()
        } catch {
            // The promise may not be left unfulfilled (NIO reports a leaked promise).
            outcome.fail(error)
            throw error
        }
        // A wait on a future ignores cancellation: the benchmark's deadline closes the channel,
        // which ends the read with what arrived.
        return try await withTaskCancellationHandler {
            try await outcome.futureResult.get()
        } onCancel: {
            channel.close(promise: nil)
        }
    }

    static func upgrade(_ path: String, port: Int) -> [UInt8] {
        Array(("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: bm92YS1iZW5jaC1jbGllbnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8)
    }

    /// Sends the upgrade, checks for the 101, then hands text frames to the reader, answers
    /// pings, and reports once.
    final class RawStreamHandler<R: Reader>: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        let reader: R
        let request: [UInt8]
        let outcome: EventLoopPromise<R.Outcome>
        var upgraded = false
        var done = false
        /// Bytes of a frame (or of the 101 answer) that a read cut short, kept for the next.
        var partial: ByteBuffer?

        init(reader: R, request: [UInt8], outcome: EventLoopPromise<R.Outcome>) {
            self.reader = reader
            self.request = request
            self.outcome = outcome
        }

        func channelActive(context: ChannelHandlerContext) {
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: request)), promise: nil)
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            if !upgraded {
                if var kept = partial {
                    kept.writeBuffer(&buffer)
                    buffer = kept
                    partial = nil
                }
                let crlf2: [UInt8] = [13, 10, 13, 10]
                guard let end = buffer.readableBytesView.firstRange(of: crlf2)?.upperBound else {
                    partial = buffer
                    return
                }
                let head = buffer.readString(length: end - buffer.readerIndex) ?? ""
                guard head.hasPrefix("HTTP/1.1 101") else {
                    return finish("the server refused the WebSocket upgrade: \(head.prefix { $0 != "\r" })", context: context)
                }
                upgraded = true
            } else if var kept = partial {
                // Only the frame that the last read cut short is copied, completed from this one.
                partial = nil
                while true {
                    if let (_, length, header) = Self.frameHeader(kept) {
                        let need = header + length - kept.readableBytes
                        guard need <= buffer.readableBytes else {
                            kept.writeBuffer(&buffer)
                            partial = kept
                            return
                        }
                        var rest = buffer.readSlice(length: need)!
                        kept.writeBuffer(&rest)
                        break
                    }
                    guard var next = buffer.readSlice(length: min(1, buffer.readableBytes)), next.readableBytes > 0 else {
                        partial = kept
                        return
                    }
                    kept.writeBuffer(&next)
                }
                readFrames(&kept, context: context)
            }
            readFrames(&buffer, context: context)
            if buffer.readableBytes > 0, !done { partial = buffer }
        }

        /// Reads the whole frames at the start of `buffer`, leaving a cut one.
        private func readFrames(_ buffer: inout ByteBuffer, context: ChannelHandlerContext) {
            while !done, let (opcode, length, header) = Self.frameHeader(buffer), buffer.readableBytes >= header + length {
                buffer.moveReaderIndex(forwardBy: header)
                switch opcode {
                case 0x1:
                    let finished = buffer.withUnsafeReadableBytes { reader.read(UnsafeRawBufferPointer(rebasing: $0[..<length])) }
                    if finished { finish(nil, context: context) }
                case 0x9:
                    send(opcode: 0xA, payload: buffer.getSlice(at: buffer.readerIndex, length: length)!, context: context)
                case 0x8:
                    finish("the server closed the stream", context: context)
                default:
                    break
                }
                buffer.moveReaderIndex(forwardBy: length)
            }
        }

        /// Opcode, payload length and header length of the frame at the buffer's start, if its
        /// header is there whole.
        static func frameHeader(_ buffer: ByteBuffer) -> (UInt8, Int, Int)? {
            guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
                  let second = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) else { return nil }
            switch second & 0x7F {
            case 126:
                guard let length = buffer.getInteger(at: buffer.readerIndex + 2, as: UInt16.self) else { return nil }
                return (first & 0x0F, Int(length), 4)
            case 127:
                guard let length = buffer.getInteger(at: buffer.readerIndex + 2, as: UInt64.self) else { return nil }
                return (first & 0x0F, Int(clamping: length), 10)
            case let length:
                return (first & 0x0F, Int(length), 2)
            }
        }

        /// A masked frame of at most 125 bytes (a pong, a close), as a client must send.
        private func send(opcode: UInt8, payload: ByteBuffer, context: ChannelHandlerContext) {
            let mask = (0..<4).map { _ in UInt8.random(in: .min ... .max) }
            var out = context.channel.allocator.buffer(capacity: 6 + payload.readableBytes)
            out.writeBytes([0x80 | opcode, 0x80 | UInt8(payload.readableBytes)] + mask)
            out.writeBytes(payload.readableBytesView.enumerated().map { $1 ^ mask[$0 % 4] })
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        }

        /// Reports, then closes the connection (a close frame first, as a client should).
        private func finish(_ failure: String?, context: ChannelHandlerContext) {
            guard !done else { return }
            done = true
            outcome.succeed(reader.outcome(failure: failure))
            if upgraded {
                var reason = context.channel.allocator.buffer(capacity: 2)
                reason.write(webSocketErrorCode: .normalClosure)
                send(opcode: 0x8, payload: reason, context: context)
            }
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            if !done {
                done = true
                outcome.succeed(reader.outcome(failure: upgraded ? "the connection closed" : "the connection closed before the upgrade"))
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
