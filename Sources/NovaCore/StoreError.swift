/// A store failure, as callers need to act on it: retry later, refuse the file, or report a bug.
///
/// A struct around a private code so that codes can be added without breaking callers; the message
/// names the file or server and the rule, never SQL arguments or payloads.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The server or file is unreachable or busy now; retrying later may succeed (HTTP 503).
        case unavailable
        /// The file or database is not a NOVA store, is corrupt, or is of a newer schema; refuse it.
        case unusable
        /// No room left to store more (HTTP 507).
        case full
        /// The request itself is wrong (HTTP 400).
        case invalidRequest
        /// Anything else: a bug or an unexpected database error (HTTP 500).
        case internalError
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    /// Whether retrying the same operation later may succeed.
    public var isRetryable: Bool { kind == .unavailable || kind == .full }
}
