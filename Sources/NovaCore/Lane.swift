/// The five lanes of the event model, in timeline rank order (raw < parsed < ui < command < metadata).
public enum Lane: String, Sendable, Hashable, CaseIterable, Comparable, Codable, CustomStringConvertible {
    case raw
    case parsed
    case ui
    case command
    case metadata

    /// Position in a merged timeline; also the order of `allCases`.
    public var rank: Int {
        switch self {
        case .raw: 0
        case .parsed: 1
        case .ui: 2
        case .command: 3
        case .metadata: 4
        }
    }

    public static func < (a: Lane, b: Lane) -> Bool { a.rank < b.rank }

    public var description: String { rawValue }

    /// The lane's own fields, in the order they appear in JSON answers.
    public var fieldNames: [String] { Self.fieldNamesByRank[rank] }

    private static let fieldNamesByRank: [[String]] = [
        ["connectionId", "sequence", "bytes"],
        ["streamId", "streamType", "schemaVersion", "payload"],
        ["viewId", "payload"],
        ["targetId", "commandType", "requestedBy", "payload"],
        ["metadataType", "payload"],
    ]

    /// Parses a comma list such as `raw,parsed`; answers the lanes in rank order without repeats.
    public static func parseList(_ text: String) -> Result<[Lane], LaneListError> {
        var lanes = Set<Lane>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let lane = Lane(rawValue: String(part)) else {
                return .failure(LaneListError(name: String(part)))
            }
            lanes.insert(lane)
        }
        return .success(lanes.sorted())
    }
}

public struct LaneListError: Error, Sendable, CustomStringConvertible {
    public var name: String
    public var description: String {
        "unknown lane \(quoted(name)) (expected raw, parsed, ui, command or metadata)"
    }
}

/// Which time an ordering or a range applies to.
public enum Timebase: String, Sendable, Hashable, CaseIterable, Codable {
    /// The recorder's time (`canonicalTruthTime`), the default.
    case canonical
    /// The device's time (`sourceTruthTime`).
    case source
}
