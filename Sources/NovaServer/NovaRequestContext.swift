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
    /// Why a WebSocket upgrade's token was refused: told on the socket after the upgrade (an
    /// `error` message, then 1008), because a refused upgrade can only answer a bare 400.
    var refusal: APIError?
    /// The connection, where a stream writes its frames (``StreamFrameWriter``).
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        webSocket = .init()
        channel = source.channel
    }
}
