import Hummingbird
import NIOCore

/// The request context of every NOVA route.
public struct NovaRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }
}
