import Foundation
import NIOCore
import NIOPosix

/// One keep-alive HTTP/1.1 connection of `nova bench query`, which sends a GET and reads the
/// answer on the bytes: the status line, `Content-Length`, then the body where it lies.
///
/// The benchmark's 20 clients run on the same two cores as the server and PostgreSQL, so what
/// they cost is taken from what is measured. perf of a PostgreSQL run through AsyncHTTPClient
/// showed the benchmark's process at 17% of the machine (the server 54%, PostgreSQL 27%), most
/// of it the client's per-request machinery (a pool, a task, a body stream), for answers the
/// benchmark only counts. The server is reached the same way as before: one connection per
/// client, each request answered before the next is sent.
final class BenchHTTPConnection: Sendable {
    private let channel: any Channel
    private let reader: NIOLoopBound<AnswerReader>
    private let host: String

    private init(channel: any Channel, reader: NIOLoopBound<AnswerReader>, host: String) {
        self.channel = channel
        self.reader = reader
        self.host = host
    }

    static func connect(port: Int) async throws -> BenchHTTPConnection {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(AnswerReader()) }
        }.connect(host: "127.0.0.1", port: port).get()
        let reader = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: AnswerReader.self), eventLoop: channel.eventLoop)
        }.get()
        return BenchHTTPConnection(channel: channel, reader: reader, host: "127.0.0.1:\(port)")
    }

    /// GETs `path` (with its query); the answer's status code and body.
    func get(_ path: String) async throws -> (status: Int, body: ByteBuffer) {
        let promise = channel.eventLoop.makePromise(of: (status: Int, body: ByteBuffer).self)
        let request = channel.allocator.buffer(string: "GET \(path) HTTP/1.1\r\nHost: \(host)\r\n\r\n")
        let (channel, reader) = (channel, reader)
        channel.eventLoop.execute {
            guard reader.value.expect(promise) else { return }
            channel.writeAndFlush(request, promise: nil)
        }
        return try await promise.futureResult.get()
    }

    func close() {
        channel.close(promise: nil)
    }

    /// Completes the waiting request's promise once its answer is whole.
    private final class AnswerReader: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer

        private var waiting: EventLoopPromise<(status: Int, body: ByteBuffer)>?
        private var received: ByteBuffer?
        /// The answer's head length, status and body length, once its head is in.
        private var head: (length: Int, status: Int, bodyLength: Int)?
        private var failure: String?

        /// Takes the next request's promise; false (and the promise failed) on a closed connection.
        func expect(_ promise: EventLoopPromise<(status: Int, body: ByteBuffer)>) -> Bool {
            if let failure {
                promise.fail(CLIError(failure))
                return false
            }
            waiting = promise
            return true
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var incoming = unwrapInboundIn(data)
            if received == nil { received = incoming } else { received!.writeBuffer(&incoming) }
            guard let promise = waiting, var bytes = received else { return }
            if head == nil {
                let crlf2: [UInt8] = [13, 10, 13, 10]
                guard let end = bytes.readableBytesView.firstRange(of: crlf2)?.upperBound else { return }
                let text = bytes.getString(at: bytes.readerIndex, length: end - bytes.readerIndex) ?? ""
                let lines = text.split(separator: "\r\n")
                let status = lines.first.flatMap { Int($0.dropFirst(9).prefix(3)) }
                let length = lines.dropFirst().first { $0.lowercased().hasPrefix("content-length:") }.flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) }
                guard let status, let length else {
                    return fail("an answer without a status or a Content-Length: \(lines.first ?? "")", context: context)
                }
                head = (end - bytes.readerIndex, status, length)
            }
            guard let (headLength, status, bodyLength) = head, bytes.readableBytes >= headLength + bodyLength else { return }
            bytes.moveReaderIndex(forwardBy: headLength)
            let body = bytes.readSlice(length: bodyLength)!
            received = bytes.readableBytes > 0 ? bytes : nil
            head = nil
            waiting = nil
            promise.succeed((status, body))
        }

        func channelInactive(context: ChannelHandlerContext) {
            fail("the server closed the connection", context: context)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            fail("\(error)", context: context)
        }

        private func fail(_ reason: String, context: ChannelHandlerContext) {
            failure = failure ?? reason
            waiting?.fail(CLIError(reason))
            waiting = nil
            context.close(promise: nil)
        }
    }
}
