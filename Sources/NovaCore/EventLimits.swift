/// Size limits on event fields (event-model.md). Configurable downwards only: a store must never
/// hold what another store of the same contract would refuse.
public struct EventLimits: Sendable, Hashable, Codable {
    /// Bytes of UTF-8 in `scopeId` and every other string field.
    public var maxStringBytes: Int = 256
    /// Decoded bytes of a raw frame.
    public var maxFrameBytes: Int = 1 << 20
    /// Bytes of a payload as canonical JSON.
    public var maxPayloadBytes: Int = 1 << 20

    public static let contract = EventLimits()

    public init() {}

    public init(maxStringBytes: Int, maxFrameBytes: Int, maxPayloadBytes: Int) {
        self.maxStringBytes = maxStringBytes
        self.maxFrameBytes = maxFrameBytes
        self.maxPayloadBytes = maxPayloadBytes
    }

    /// The name of the first limit above the contract's, if any.
    public var keyAboveContract: String? {
        if maxStringBytes > Self.contract.maxStringBytes || maxStringBytes < 1 { return "maxStringBytes" }
        if maxFrameBytes > Self.contract.maxFrameBytes || maxFrameBytes < 0 { return "maxFrameBytes" }
        if maxPayloadBytes > Self.contract.maxPayloadBytes || maxPayloadBytes < 2 { return "maxPayloadBytes" }
        return nil
    }
}
