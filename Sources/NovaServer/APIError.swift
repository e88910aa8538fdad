import HTTPTypes
import Foundation
import Hummingbird
import NovaCore

/// An error answer of the API: a status and `{"error": "<one sentence naming the field or rule>"}`,
/// plus extra members where the contract adds them (the rejected events of an atomic batch).
public struct APIError: HTTPResponseError, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var message: String
    public var headers: HTTPFields = [:]
    public var rejected: [IngestBatch.Rejection] = []

    public init(_ status: HTTPResponse.Status, _ message: String, headers: HTTPFields = [:]) {
        self.status = status
        self.message = message
        self.headers = headers
    }

    public var description: String { "\(status.code) \(message)" }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var out = [UInt8]()
        out.append(contentsOf: #"{"error":"#.utf8)
        CanonicalJSON.writeString(message, into: &out)
        if !rejected.isEmpty {
            out.append(contentsOf: #","rejected":"#.utf8)
            writeRejections(rejected, into: &out)
        }
        out.append(contentsOf: "}\n".utf8)
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(status: status, headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(bytes: out)))
    }

    /// The answer to a store failure: retry later (503), no room (507), or a server fault (500).
    static func store(_ error: StoreError) -> APIError {
        switch error.kind {
        case .unavailable:
            APIError(.serviceUnavailable, "store unavailable, retry later: \(error.message)", headers: [.retryAfter: "1"])
        case .full:
            APIError(.insufficientStorage, "store full, nothing was stored: \(error.message)")
        case .invalidRequest:
            APIError(.badRequest, error.message)
        case .unusable, .internalError:
            APIError(.internalServerError, "store error: \(error.message)")
        }
    }
}

func writeRejections(_ rejected: [IngestBatch.Rejection], into out: inout [UInt8]) {
    out.append(UInt8(ascii: "["))
    for (k, r) in rejected.enumerated() {
        if k > 0 { out.append(UInt8(ascii: ",")) }
        out.append(contentsOf: #"{"index":\#(r.index),"error":"#.utf8)
        CanonicalJSON.writeString(r.error, into: &out)
        out.append(UInt8(ascii: "}"))
    }
    out.append(UInt8(ascii: "]"))
}

extension HTTPResponse.Status {
    static let insufficientStorage = HTTPResponse.Status(code: 507, reasonPhrase: "Insufficient Storage")
}
