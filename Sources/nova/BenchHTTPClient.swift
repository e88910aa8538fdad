import Foundation
import NIOCore
import NIOPosix
import NovaCore

/// One keep-alive HTTP/1.1 connection of `nova bench query`, which sends a GET and reads the
/// answer on the bytes: the status line, `Content-Length`, then the body where it lies.
///
/// The benchmark's 20 clients run on the same two cores as the server and PostgreSQL, so what
/// they cost is taken from what is measured. perf of a PostgreSQL run through AsyncHTTPClient
/// showed the benchmark's process at 17% of the machine (the server 54%, PostgreSQL 27%), most
/// of it the client's per-request machinery (a pool, a task, a body stream), for answers the
/// benchmark only counts. The server is reached the same way as before: one connection per
/// client, each request answered before the next is sent. Each client now runs on its
/// connection's event loop (``run(_:path:)``), so that no query crosses threads on this side.
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

    /// An answer: its status code and body.
    typealias Answer = (status: Int, body: ByteBuffer)

    /// Runs `tally`'s queries on this connection, each sent from its event loop as the answer
    /// before it arrives (or, paced, when it falls due), until time is up; the tally then.
    /// Fails on a broken connection or an answer other than 200.
    func run(_ tally: ClientTally, path: @escaping @Sendable (LaneRead) -> String) async throws -> ClientTally {
        let promise = channel.eventLoop.makePromise(of: ClientTally.self)
        let (channel, reader, host) = (channel, reader, host)
        channel.eventLoop.execute {
            Driver(tally: tally, channel: channel, reader: reader.value, host: host, path: path, done: promise).step()
        }
        return try await promise.futureResult.get()
    }

    func close() {
        channel.close(promise: nil)
    }

    /// One client's loop on its connection's event loop, where all of it runs.
    private final class Driver {
        var tally: ClientTally
        let channel: any Channel
        let reader: AnswerReader
        let host: String
        let path: @Sendable (LaneRead) -> String
        let done: EventLoopPromise<ClientTally>

        init(tally: ClientTally, channel: any Channel, reader: AnswerReader, host: String, path: @escaping @Sendable (LaneRead) -> String, done: EventLoopPromise<ClientTally>) {
            self.tally = tally
            self.channel = channel
            self.reader = reader
            self.host = host
            self.path = path
            self.done = done
        }

        func step() {
            guard let (read, due) = tally.next() else { return done.succeed(tally) }
            let wait = due - ContinuousClock.now
            guard wait <= .zero else {
                let later = NIOLoopBound(self, eventLoop: channel.eventLoop)
                let nanoseconds = wait.components.seconds * 1_000_000_000 + wait.components.attoseconds / 1_000_000_000
                channel.eventLoop.scheduleTask(in: .nanoseconds(nanoseconds)) { later.value.send(read, due: due) }
                return
            }
            send(read, due: due)
        }

        func send(_ read: LaneRead, due: ContinuousClock.Instant) {
            let request = channel.allocator.buffer(string: "GET \(path(read)) HTTP/1.1\r\nHost: \(host)\r\n\r\n")
            let expected = reader.expect { [self] result in
                switch result {
                case .failure(let error):
                    done.fail(error)
                case .success(let answer) where answer.status != 200:
                    done.fail(CLIError("HTTP \(answer.status): \(String(buffer: answer.body).prefix(200))"))
                case .success(let answer):
                    tally.record(answer.body, for: read, dueAt: due)
                    step()
                }
            }
            guard expected else { return done.fail(CLIError("the server closed the connection")) }
            channel.writeAndFlush(request, promise: nil)
        }
    }

    /// Hands each answer, once whole, to the request waiting for it.
    private final class AnswerReader: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer

        private var waiting: ((Result<Answer, any Error>) -> Void)?
        private var received: ByteBuffer?
        /// The answer's head length, status and body length, once its head is in.
        private var head: (length: Int, status: Int, bodyLength: Int)?
        private var failure: String?

        /// Takes the next request's callback; false (and the callback told) on a closed connection.
        func expect(_ answered: @escaping (Result<Answer, any Error>) -> Void) -> Bool {
            if let failure {
                answered(.failure(CLIError(failure)))
                return false
            }
            waiting = answered
            return true
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var incoming = unwrapInboundIn(data)
            if received == nil { received = incoming } else { received!.writeBuffer(&incoming) }
            guard let answered = waiting, var bytes = received else { return }
            if head == nil {
                guard let parsed = bytes.withUnsafeReadableBytes(Self.head) else { return }
                guard let status = parsed.status, let length = parsed.bodyLength else {
                    return fail("an answer without a status or a Content-Length: \(String(buffer: bytes).prefix(100))", context: context)
                }
                head = (parsed.length, status, length)
            }
            guard let (headLength, status, bodyLength) = head, bytes.readableBytes >= headLength + bodyLength else { return }
            bytes.moveReaderIndex(forwardBy: headLength)
            let body = bytes.readSlice(length: bodyLength)!
            received = bytes.readableBytes > 0 ? bytes : nil
            head = nil
            waiting = nil
            answered(.success((status, body)))
        }

        /// An answer head's length, status code and `Content-Length`, read where they lie; nil
        /// until the head is whole. (Through Foundation's search and `String` lines, this was
        /// the benchmark process's largest cost after the socket.)
        static func head(_ raw: UnsafeRawBufferPointer) -> (length: Int, status: Int?, bodyLength: Int?)? {
            var at = 0
            var found: Int?
            while found == nil, at + 4 <= raw.count, let cr = raw[at...].firstIndex(of: 13) {
                if cr + 4 <= raw.count, raw[cr + 1] == 10, raw[cr + 2] == 13, raw[cr + 3] == 10 { found = cr }
                at = cr + 1
            }
            guard let found else { return nil }
            let length = found + 4
            func number(_ range: Range<Int>) -> Int? {
                var value = 0
                var digits = 0
                for i in range where raw[i] != UInt8(ascii: " ") {
                    guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(raw[i]) else { return nil }
                    value = value * 10 + Int(raw[i] - UInt8(ascii: "0"))
                    digits += 1
                }
                return digits > 0 ? value : nil
            }
            let status = length > 12 ? number(9..<12) : nil
            let key = "content-length:".utf8
            var bodyLength: Int?
            var line = (raw[..<length].firstIndex(of: 10) ?? length) + 1
            while line < length - 2 {
                let lineEnd = raw[line..<length].firstIndex(of: 13) ?? length
                if lineEnd - line > key.count, zip(raw[line...], key).allSatisfy({ $0 | 0x20 == $1 }) {
                    bodyLength = number((line + key.count)..<lineEnd)
                }
                line = lineEnd + 2
            }
            return (length, status, bodyLength)
        }

        func channelInactive(context: ChannelHandlerContext) {
            fail("the server closed the connection", context: context)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            fail("\(error)", context: context)
        }

        private func fail(_ reason: String, context: ChannelHandlerContext) {
            failure = failure ?? reason
            let answered = waiting
            waiting = nil
            answered?(.failure(CLIError(reason)))
            context.close(promise: nil)
        }
    }
}
