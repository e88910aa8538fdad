/// A parsed ingest request body: the valid events, and the rejected ones with their reasons.
///
/// Positions (`index`) count events in the batch from 0: elements of a JSON array, or non-blank
/// lines of NDJSON.
public struct IngestBatch: Sendable {
    public enum Format: Sendable {
        /// One JSON event per line (`application/x-ndjson`); a bad line rejects only its event.
        case ndjson
        /// One JSON array of events (`application/json`); it must parse as a whole.
        case jsonArray
    }

    public struct Rejection: Sendable, Hashable {
        public var index: Int
        public var error: String
    }

    /// The valid events, with their positions in the batch.
    public var events: [Event]
    public var indices: [Int]
    public var rejected: [Rejection]
    /// How many events the body held.
    public var count: Int

    /// Parses and validates every event of `body`. Throws only when the body as a whole cannot be
    /// read (an unparsable JSON array, or a JSON value that is not an array).
    public init(body: UnsafeBufferPointer<UInt8>, format: Format, decoder: EventDecoder, receivedAt: Timestamp) throws(EventValidationError) {
        events = []
        indices = []
        rejected = []
        count = 0
        switch format {
        case .ndjson:
            var lineStart = 0
            var k = 0
            while k <= body.count {
                if k == body.count || body[k] == UInt8(ascii: "\n") {
                    var end = k
                    if end > lineStart, body[end - 1] == UInt8(ascii: "\r") { end -= 1 }
                    let line = UnsafeBufferPointer(rebasing: body[lineStart..<end])
                    if !line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) {
                        add(decoder.decode(json: line, receivedAt: receivedAt))
                    }
                    lineStart = k + 1
                }
                k += 1
            }
        case .jsonArray:
            let value: JSONValue
            do {
                value = try JSONParser.parse(body)
            } catch {
                throw EventValidationError(field: "body", rule: error.description)
            }
            guard case .array(let elements) = value else {
                throw EventValidationError(field: "body", rule: "must be a JSON array of events, found \(value.typeName)")
            }
            for element in elements { add(decoder.decode(element, receivedAt: receivedAt)) }
        }
    }

    private mutating func add(_ result: Result<Event, EventValidationError>) {
        switch result {
        case .success(let event):
            events.append(event)
            indices.append(count)
        case .failure(let error):
            rejected.append(Rejection(index: count, error: error.message(index: count)))
        }
        count += 1
    }
}
