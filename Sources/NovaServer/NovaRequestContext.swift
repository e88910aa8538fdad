import Hummingbird
import HummingbirdWebSocket
import NIOCore

/// The request context of every NOVA route; it can carry a WebSocket upgrade (`/v1/stream`).
public struct NovaRequestContext: RequestContext, WebSocketRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let webSocket: WebSocketHandlerReference<Self>

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        webSocket = .init()
    }
}
