import AsyncHTTPClient
import CompressNIO
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import NovaCore
import Synchronization

/// The edge's HTTP client for the hub's sync routes: the watermark, batches (gzipped unless
/// configured off), and the digests that `nova verify` and `nova sync repair` compare.
public struct SyncClient: Sendable {
    public let upstream: String
    let token: String?
    let gzip: Bool
    let timeout: TimeAmount
    let http: HTTPClient

    /// A request the hub answered with an error, or that got no answer.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        /// The HTTP status, nil when there was no answer.
        public var status: Int?
        public var message: String
        public var description: String { message }
    }

    /// One client for the process. It fails a request at once when the hub refuses connections
    /// (the default client retries connecting until the request's deadline, which would hide an
    /// outage from the shipper's back-off and status for a minute).
    public static let defaultHTTP = makeHTTP(trustRoots: nil)

    static func makeHTTP(trustRoots: [NIOSSLCertificate]?) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .seconds(5)
        if let trustRoots {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(trustRoots)
            configuration.tlsConfiguration = tls
        }
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// Clients that trust a configured authority instead of the system's, one per file and kept
    /// for the process (like ``defaultHTTP``).
    private static let trusting = Mutex<[String: HTTPClient]>([:])

    /// The client for an `https://` hub whose certificate `caFile` (PEM) signed; nil: the
    /// system's roots. `key` names the setting in the error when the file is unusable.
    public static func http(trusting caFile: String?, key: String = "sync.caFile") throws(ConfigurationError) -> HTTPClient {
        guard let caFile else { return defaultHTTP }
        if let client = trusting.withLock({ $0[caFile] }) { return client }
        let roots: [NIOSSLCertificate]
        do {
            roots = try NIOSSLCertificate.fromPEMFile(caFile)
        } catch {
            throw ConfigurationError(key: key, rule: "cannot read certificates from \(caFile) (\(error))")
        }
        guard !roots.isEmpty else { throw ConfigurationError(key: key, rule: "\(caFile) holds no PEM certificate") }
        return trusting.withLock { clients in
            if let client = clients[caFile] { return client }
            let client = makeHTTP(trustRoots: roots)
            clients[caFile] = client
            return client
        }
    }

    public init(upstream: String, token: String?, gzip: Bool = true, timeout: Duration = .seconds(60), http: HTTPClient = SyncClient.defaultHTTP) {
        self.upstream = upstream.hasSuffix("/") ? String(upstream.dropLast()) : upstream
        self.token = token
        self.gzip = gzip
        self.timeout = .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)
        self.http = http
    }

    public func watermark(siteId: String, storeId: String) async throws(Failure) -> SyncWatermark {
        let query = "siteId=\(Self.percentEncoded(siteId))&storeId=\(Self.percentEncoded(storeId))"
        let (status, body, _) = try await request(.GET, "/v1/sync/watermark?\(query)")
        guard status == 200 else { throw failure(status, body) }
        return try Self.parseWatermark(body)
    }

    /// A batch encoded (and compressed) for sending: the shipper prepares the next one while the
    /// previous is in flight.
    public struct Encoded: Sendable {
        var body: ByteBuffer
        var headers: HTTPHeaders
        /// The encoding's size before compression, which the hub's body limit also bounds.
        var uncompressedBytes: Int
    }

    public func encode(_ batch: SyncBatch) -> Encoded {
        var body = ByteBuffer(bytes: SyncBatchCodec.encode(batch))
        let uncompressedBytes = body.readableBytes
        var headers: HTTPHeaders = ["Content-Type": SyncBatchCodec.contentType]
        if gzip, let compressed = try? body.compress(with: .gzip(configuration: .init(compressionLevel: .fastestCompression))) {
            body = compressed
            headers.add(name: "Content-Encoding", value: "gzip")
        }
        return Encoded(body: body, headers: headers, uncompressedBytes: uncompressedBytes)
    }

    /// Sends a batch (or heartbeat) and says what came of it.
    public func ship(_ batch: SyncBatch) async -> ShipperMachine.Outcome {
        await ship(encode(batch))
    }

    public func ship(_ encoded: Encoded) async -> ShipperMachine.Outcome {
        let (body, headers) = (encoded.body, encoded.headers)
        do {
            let (status, answer, retryAfter) = try await request(.POST, "/v1/sync/batches", headers: headers, body: body)
            switch status {
            case 200: return .acknowledged(try Self.parseWatermark(answer))
            case 409: return .gap(try Self.parseWatermark(answer))
            case 413: return .tooLarge(failure(status, answer).message)
            case 503: return .overloaded(retryAfter: retryAfter)
            case 500...: return .unreachable(failure(status, answer).message)
            default: return .refused(failure(status, answer).message)
            }
        } catch {
            return error.status == nil ? .unreachable(error.message) : .refused(error.message)
        }
    }

    /// The hub's digests for `request` (`GET /v1/digests`).
    public func digests(_ r: DigestRequest) async throws(Failure) -> [BucketDigest] {
        let query = [
            "scope=\(Self.percentEncoded(r.scopeId))", "from=\(r.range.lowerBound.rfc3339)", "to=\(r.range.upperBound.rfc3339)",
            "bucket=\(r.bucketMicros)us", "timebase=\(r.timebase.rawValue)", "lane=\(r.lanes.map(\.rawValue).joined(separator: ","))",
        ].joined(separator: "&")
        let (status, body, _) = try await request(.GET, "/v1/digests?\(query)")
        guard status == 200 else { throw failure(status, body) }
        guard case .array(let items)? = (try? JSONParser.parse(body))?["digests"] else {
            throw Failure(status: status, message: "\(upstream): the digests answer is not {\"digests\": [...]}")
        }
        var out = [BucketDigest]()
        for item in items {
            guard let digest = Self.digest(item) else { throw Failure(status: status, message: "\(upstream): a digest entry is malformed") }
            out.append(digest)
        }
        return out
    }

    static func digest(_ item: JSONValue) -> BucketDigest? {
        guard case .string(let laneName)? = item["lane"], let lane = Lane(rawValue: laneName) else { return nil }
        guard case .string(let bucket)? = item["bucket"], let start = try? Timestamp(rfc3339: bucket) else { return nil }
        guard case .number(let count)? = item["count"], let n = count.int64 else { return nil }
        guard case .string(let xor)? = item["xor"], let id = EventID(hex: xor) else { return nil }
        return BucketDigest(lane: lane, bucketStart: start, count: n, xor: id)
    }

    func request(_ method: HTTPMethod, _ path: String, headers: HTTPHeaders = [:], body: ByteBuffer? = nil) async throws(Failure) -> (Int, [UInt8], Duration?) {
        var request = HTTPClientRequest(url: upstream + path)
        request.method = method
        request.headers = headers
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body { request.body = .bytes(body) }
        do {
            let response = try await http.execute(request, timeout: timeout)
            let bytes = try await response.body.collect(upTo: 64 << 20)
            let retryAfter = response.headers.first(name: "Retry-After").flatMap(Int.init).map { Duration.seconds($0) }
            return (Int(response.status.code), Array(bytes.readableBytesView), retryAfter)
        } catch {
            throw Failure(status: nil, message: "\(upstream): no answer (\(Self.describe(error)))")
        }
    }

    func failure(_ status: Int, _ body: [UInt8]) -> Failure {
        var message = "\(upstream) answered \(status)"
        if case .string(let text)? = (try? JSONParser.parse(body))?["error"] { message += ": \(text)" }
        return Failure(status: status, message: message)
    }

    static func parseWatermark(_ body: [UInt8]) throws(Failure) -> SyncWatermark {
        guard let value = try? JSONParser.parse(body), case .number(let n)? = value["ackedSeq"], let acked = n.int64, acked >= 0 else {
            throw Failure(status: 200, message: "the hub's answer has no valid ackedSeq")
        }
        var last: EventID?
        if case .string(let hex)? = value["lastEventId"] { last = EventID(hex: hex) }
        return SyncWatermark(ackedSeq: acked, lastEventId: last)
    }

    static func describe(_ error: any Error) -> String {
        let text = String(describing: error)
        return text.count > 200 ? String(text.prefix(200)) + "…" : text
    }

    static func percentEncoded(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }
}
