import Hummingbird
import HummingbirdWebSocket
import NIOCore

/// The request context of every NOVA route; it can carry a WebSocket upgrade (`/v1/stream`).
public struct NovaRequestContext: RequestContext, WebSocketRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let webSocket: WebSocketHandlerReference<Self>
    /// The site a `sync` token is bound to, once authenticated (nil with auth off).
    public var syncSiteId: String?
    /// Which configured token authenticated the request (its position in `server.tokens`); nil
    /// with auth off. Per-token limits count by it.
    public var tokenSlot: Int?
    /// The connection, where a stream writes its frames (``StreamFrameWriter``).
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        webSocket = .init()
        channel = source.channel
    }
}
