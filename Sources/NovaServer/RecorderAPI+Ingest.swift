import CompressNIO
import Foundation
import Prometheus
import Hummingbird
import NIOCore
import NovaCore

extension RecorderAPI {
    /// `POST /v1/events`: validate every event, append the valid ones in one transaction, answer
    /// only after the commit. A bad event is rejected alone; with `?atomic=true` the whole batch is
    /// refused (422) and nothing stored. A body over `maxBodyBytes` is refused (413) unread, one of
    /// more than `maxEventsPerBatch` events (413) after parsing.
    func ingest(_ request: Request) async throws -> Response {
        var parameters = try QueryParameters(request.uri)
        let atomic = try parameters.bool("atomic")
        try parameters.finish()
        let format = try Self.ingestFormat(request.headers[.contentType])
        let body = try await decodedBody(request, unapplied: "nothing stored")
        let receivedAt = Timestamp.now()
        let ticket = inFlight.begin(receivedAt)
        defer { inFlight.end(ticket) }
        let batch: IngestBatch
        do {
            batch = try body.withUnsafeReadableBytes { raw in
                try IngestBatch(body: raw.bindMemory(to: UInt8.self), format: format, decoder: decoder, receivedAt: receivedAt)
            }
        } catch let error as EventValidationError {
            throw APIError(.badRequest, error.description)
        }
        let maxEvents = configuration.server.maxEventsPerBatch
        guard batch.count <= maxEvents else {
            throw APIError(.contentTooLarge, "body: \(batch.count) events exceeds the limit of \(maxEvents) per batch (server.maxEventsPerBatch); nothing stored")
        }
        metrics.ingestRejected.increment(by: Int64(batch.rejected.count))
        if atomic, !batch.rejected.isEmpty {
            var error = APIError(.unprocessableContent, "batch rejected as a whole (atomic=true): \(batch.rejected.count) of \(batch.count) events are invalid; nothing stored")
            error.rejected = batch.rejected
            throw error
        }
        let result: AppendResult
        let started = ContinuousClock.now
        do {
            result = try await store.append(batch.events)
        } catch {
            if error.kind == .full { metrics.ingestRefusedFull.increment(by: Int64(batch.events.count)) }
            throw APIError.store(error)
        }
        metrics.appendDuration.record(ContinuousClock.now - started)
        await feed.published(batch.events, seqs: result.ingestSeqs)
        metrics.ingestAccepted.increment(by: Int64(result.accepted))
        metrics.ingestDuplicates.increment(by: Int64(result.duplicates))
        metrics.ingestBatches.increment()
        var out = [UInt8]()
        out.append(contentsOf: #"{"accepted":\#(result.accepted),"duplicates":\#(result.duplicates),"rejected":"#.utf8)
        writeRejections(batch.rejected, into: &out)
        out.append(contentsOf: "}\n".utf8)
        return Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: out)))
    }

    /// A body, read up to `server.maxBodyBytes` (413 past it, `unapplied` saying what that
    /// means) and decoded as its `Content-Encoding` says: gzip or none; any other is refused (415)
    /// rather than parsed as it is.
    func decodedBody(_ request: Request, unapplied: String) async throws -> ByteBuffer {
        let maxBytes = configuration.server.maxBodyBytes
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > maxBytes {
            throw APIError(.contentTooLarge, "body: \(length) bytes exceeds the limit of \(maxBytes) (server.maxBodyBytes); \(unapplied)")
        }
        var body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: maxBytes)
        } catch is NIOTooManyBytesError {
            throw APIError(.contentTooLarge, "body: exceeds the limit of \(maxBytes) bytes (server.maxBodyBytes); \(unapplied)")
        }
        switch request.headers[.contentEncoding]?.lowercased() {
        case nil, "identity": break
        case "gzip":
            do {
                body = try body.decompress(with: .gzip(), maxSize: maxBytes)
            } catch let error as CompressNIOError where error == .bufferOverflow {
                throw APIError(.contentTooLarge, "body: exceeds the limit of \(maxBytes) bytes (server.maxBodyBytes) once decompressed; \(unapplied)")
            } catch {
                throw APIError(.badRequest, "body: not valid gzip data (Content-Encoding: gzip); \(unapplied)")
            }
        case let other?:
            throw APIError(.unsupportedMediaType, "Content-Encoding: must be gzip or identity, found \(quotedParameter(other)); \(unapplied)")
        }
        return body
    }

    static func ingestFormat(_ contentType: String?) throws(APIError) -> IngestBatch.Format {
        let parts = contentType?.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        // Bodies are UTF-8 (api.md); a body declared in another charset is not parsed as if it were.
        for parameter in parts?.dropFirst() ?? [] where parameter.hasPrefix("charset=") {
            let charset = parameter.dropFirst("charset=".count).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            guard charset == "utf-8" || charset == "utf8" else {
                throw APIError(.unsupportedMediaType, "Content-Type: charset must be utf-8, found \(quotedParameter(charset))")
            }
        }
        switch parts?.first {
        case "application/x-ndjson", "application/ndjson", "application/jsonl": return .ndjson
        case "application/json": return .jsonArray
        default:
            throw APIError(
                .unsupportedMediaType,
                "Content-Type: must be application/x-ndjson (one event a line) or application/json (an array), found \(contentType.map(quotedParameter) ?? "none")")
        }
    }
}
