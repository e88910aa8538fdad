import Hummingbird
import HummingbirdWebSocket
import NIOWebSocket
import NovaCore
import Prometheus
import Synchronization

extension RecorderAPI {
    /// `GET /v1/stream`: LIVE and REWIND over WebSocket (api.md, Streaming).
    ///
    /// Bad parameters and bad messages are answered on the socket, as the contract asks: an
    /// `error` message naming the problem, then a close with 1008 (policy violation), 1003 for
    /// binary messages, 1009 for oversized ones, 1011 when the store fails. Reading the client
    /// runs beside sending, so commands act mid-stream and a close is noticed at once.
    func stream(_ inbound: WebSocketInboundStream, _ outbound: WebSocketOutboundWriter, _ context: WebSocketRouterContext<NovaRequestContext>) async throws {
        if let refusal = context.requestContext.refusal {
            await StreamFailure(code: .policyViolation, message: refusal.message).report(on: outbound)
            return
        }
        let token = context.requestContext.tokenSlot ?? -1
        let maxStreams = configuration.server.maxStreamsPerToken
        guard streamAdmission.enter(token, limit: maxStreams) else {
            metrics.streamsRefused.increment()
            await StreamFailure(
                code: .policyViolation,
                message: "too many streams: this token has \(maxStreams) open (server.maxStreamsPerToken); close one first"
            ).report(on: outbound)
            return
        }
        defer { streamAdmission.leave(token) }
        metrics.streamClients.increment()
        defer { metrics.streamClients.decrement() }
        let maxMessage = configuration.server.maxStreamMessageBytes
        let request: StreamRequest
        do {
            request = try StreamRequest(context.request.uri)
        } catch {
            await StreamFailure(code: .policyViolation, message: error.message).report(on: outbound)
            return
        }
        let control = StreamControl()
        let store = store
        let feed = feed
        let metrics = metrics
        let handOverDistance = handOverDistance
        let inFlight = inFlight
        let pageBytes = configuration.server.maxPageBytes
        let channel = context.requestContext.channel
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    for try await message in inbound.messages(maxSize: maxMessage) {
                        switch message {
                        case .text(let text) where text.utf8.count > maxMessage:
                            // `maxSize` bounds messages of several frames; a single frame up to
                            // the socket's frame limit arrives whole, so it is measured here.
                            control.fail(.messageTooLarge, "message: larger than \(maxMessage) bytes (server.maxStreamMessageBytes)")
                            return
                        case .text(let text):
                            do {
                                control.post(try StreamCommand(parsing: text))
                            } catch let error as APIError {
                                control.fail(.policyViolation, error.message)
                                return
                            }
                        case .binary:
                            control.fail(.unacceptableData, "message: must be a JSON text message, not binary")
                            return
                        }
                    }
                } catch {
                    control.fail(.messageTooLarge, "message: larger than \(maxMessage) bytes (server.maxStreamMessageBytes) or malformed (\(error))")
                    return
                }
                control.close()
            }
            // The sender notices the reader's news (a command, a failure to report, the client's
            // close) within 250 ms at most; when it ends, so does the reader.
            do {
                var session = try await StreamSession(
                    request: request, store: store, feed: feed, control: control, outbound: outbound,
                    frames: try await StreamFrameWriter(channel: channel), metrics: metrics, inFlight: inFlight, handOverDistance: handOverDistance,
                    pageBytes: pageBytes)
                try await session.run()
            } catch let failure as StreamFailure {
                await failure.report(on: outbound)
            } catch let error as StoreError {
                await StreamFailure(code: .unexpectedServerError, message: "store: \(error.message)").report(on: outbound)
            } catch {
                // The connection went away mid-write, or the server is shutting down.
            }
            group.cancelAll()
        }
    }
}

/// Open streams per token, for `server.maxStreamsPerToken`.
final class StreamAdmission: Sendable {
    private let open = Mutex<[Int: Int]>([:])

    func enter(_ token: Int, limit: Int) -> Bool {
        open.withLock { open in
            guard open[token, default: 0] < limit else { return false }
            open[token, default: 0] += 1
            return true
        }
    }

    func leave(_ token: Int) {
        open.withLock { open in
            open[token, default: 1] -= 1
            if open[token] == 0 { open[token] = nil }
        }
    }
}
