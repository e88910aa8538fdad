import Hummingbird
import HummingbirdWebSocket
import NIOWebSocket
import NovaCore
import Prometheus

extension RecorderAPI {
    /// `GET /v1/stream`: LIVE and REWIND over WebSocket (api.md, Streaming).
    ///
    /// Bad parameters and bad messages are answered on the socket, as the contract asks: an
    /// `error` message naming the problem, then a close with 1008 (policy violation), 1003 for
    /// binary messages, 1009 for oversized ones, 1011 when the store fails. Reading the client
    /// runs beside sending, so commands act mid-stream and a close is noticed at once.
    func stream(_ inbound: WebSocketInboundStream, _ outbound: WebSocketOutboundWriter, _ context: WebSocketRouterContext<NovaRequestContext>) async throws {
        metrics.streamClients.increment()
        defer { metrics.streamClients.decrement() }
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
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    for try await message in inbound.messages(maxSize: 4096) {
                        switch message {
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
                    control.fail(.messageTooLarge, "message: larger than 4096 bytes or malformed (\(error))")
                    return
                }
                control.close()
            }
            // The sender notices the reader's news (a command, a failure to report, the client's
            // close) within 250 ms at most; when it ends, so does the reader.
            do {
                var session = try await StreamSession(
                    request: request, store: store, feed: feed, control: control, outbound: outbound, metrics: metrics,
                    handOverDistance: handOverDistance)
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
