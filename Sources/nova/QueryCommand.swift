import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NovaCore
import NovaSync

/// `nova query`: an ordered range, every page, as NDJSON or CSV, from a store or a server.
struct QueryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query",
        abstract: "Print an ordered range as NDJSON or CSV, from a store locator or a server URL.",
        discussion: """
            Examples:
              nova query sqlite:data/nova.db --scope site-a --from 2026-01-27T00:00:00Z --to 2026-01-28T00:00:00Z
              nova query http://127.0.0.1:8080 --scope site-a --from ... --to ... --lane raw --filter connectionId=uart0 --format csv
            """
    )

    @Argument(help: "sqlite:PATH, postgres://USER@HOST:PORT/DB, or the base URL of a recorder or hub.")
    var source: String

    @Option(help: "The recording scope.") var scope: String
    @Option(help: "Start of the half-open range (RFC 3339).") var from: String
    @Option(help: "End of the half-open range (RFC 3339).") var to: String
    @Option(help: "canonical (recorder time, default) or source (device time).") var timebase: String = "canonical"
    @Option(help: "One lane or a comma list (default: all five, merged as a timeline).") var lane: String?
    @Option(help: "A filter such as connectionId=uart0 (repeatable; one per lane).") var filter: [String] = []
    @Option(help: "ndjson or csv.") var format: String = "ndjson"
    @Option(help: "Events per page requested.") var pageSize: Int = 10_000
    @Option(help: "Environment variable holding a bearer token, for a server URL.") var tokenEnv: String = "NOVA_TOKEN"
    @Option(help: "PEM file of the authority that signed an https:// server's certificate (default: the system's).") var caFile: String?

    func validate() throws {
        guard ["ndjson", "csv"].contains(format) else { throw ValidationError("--format: must be ndjson or csv, found \(format)") }
        guard Timebase(rawValue: timebase) != nil else { throw ValidationError("--timebase: must be canonical or source, found \(timebase)") }
        guard pageSize >= 1 else { throw ValidationError("--page-size: must be at least 1") }
        for f in filter {
            let parts = f.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, Lane(filterField: String(parts[0])) != nil else {
                throw ValidationError("--filter: expected FIELD=VALUE with FIELD one of connectionId, streamId, viewId, targetId, metadataType; found \(f)")
            }
        }
    }

    func run() async throws {
        let output = EventOutput(csv: format == "csv")
        output.writeHeader()
        if source.hasPrefix("http://") || source.hasPrefix("https://") {
            try await runAgainstServer(output)
        } else {
            try await runAgainstStore(output)
        }
        output.flush()
    }

    private var filters: [(String, String)] {
        filter.map { f in
            let parts = f.split(separator: "=", maxSplits: 1).map(String.init)
            return (parts[0], parts[1])
        }
    }

    private func runAgainstStore(_ output: EventOutput) async throws {
        try await StoreLocator(source).withStore(create: false, readOnly: true, logger: toolLogger()) { store in
            try await query(store, output)
        }
    }

    private func query(_ store: any EventStore, _ output: EventOutput) async throws {
        let fromTime = try parseTime("--from", from)
        let toTime = try parseTime("--to", to)
        guard fromTime <= toTime else { throw CLIError("--from: must not be after --to") }
        var filterMap = [Lane: String]()
        for (field, value) in filters { filterMap[Lane(filterField: field)!] = value }
        var lanes = filterMap.isEmpty ? Lane.allCases : filterMap.keys.sorted()
        if let lane {
            switch Lane.parseList(lane) {
            case .success(let parsed): lanes = parsed
            case .failure(let error): throw CLIError("--lane: \(error)")
            }
        }
        var query = EventQuery(
            scopeId: scope, range: fromTime..<toTime, timebase: Timebase(rawValue: timebase)!, lanes: lanes, filters: filterMap,
            limit: pageSize, maxBytes: 16 << 20)
        while true {
            let page: EventPage
            do {
                page = try await store.page(query)
            } catch {
                throw CLIError(error.message)
            }
            for event in page.events { output.write(event) }
            guard let next = page.next else { break }
            query.after = next
        }
    }

    private func runAgainstServer(_ output: EventOutput) async throws {
        guard var components = URLComponents(string: source) else { throw CLIError("\(source): not a URL") }
        components.path = (components.path.hasSuffix("/") ? String(components.path.dropLast()) : components.path) + "/v1/events"
        var items = [
            URLQueryItem(name: "scope", value: scope), URLQueryItem(name: "from", value: from), URLQueryItem(name: "to", value: to),
            URLQueryItem(name: "timebase", value: timebase), URLQueryItem(name: "limit", value: String(pageSize)),
        ]
        if let lane { items.append(URLQueryItem(name: "lane", value: lane)) }
        for (field, value) in filters { items.append(URLQueryItem(name: field, value: value)) }
        let client = try SyncClient.http(trusting: caFile, key: "--ca-file")
        let token = ProcessInfo.processInfo.environment[tokenEnv]
        var cursor: String?
        let decoder = EventDecoder()
        repeat {
            components.queryItems = items + (cursor.map { [URLQueryItem(name: "after", value: $0)] } ?? [])
            // '+' in a time offset must reach the server as %2B, not as a space.
            components.percentEncodedQuery = components.percentEncodedQuery?.replacingOccurrences(of: "+", with: "%2B")
            var request = HTTPClientRequest(url: components.string!)
            if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
            let response: HTTPClientResponse
            do {
                response = try await client.execute(request, timeout: .seconds(300))
            } catch {
                throw CLIError("\(source): no answer (is the server running?): \(error)")
            }
            let body = try await response.body.collect(upTo: 1 << 31)
            guard response.status == .ok else {
                throw CLIError("\(source): HTTP \(response.status.code): \(String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            try body.withUnsafeReadableBytes { raw in
                let batch = try IngestBatch(body: raw.bindMemory(to: UInt8.self), format: .ndjson, decoder: decoder, receivedAt: .min)
                if let bad = batch.rejected.first { throw CLIError("\(source): the server answered an invalid event: \(bad.error)") }
                for event in batch.events { output.write(event) }
            }
            cursor = response.headers.first(name: "Nova-Next-Cursor")
        } while cursor != nil
    }

    private func parseTime(_ flag: String, _ text: String) throws -> Timestamp {
        do {
            return try Timestamp(rfc3339: text)
        } catch {
            throw CLIError("\(flag): \(error.description)")
        }
    }
}

/// Writes events to standard output as NDJSON or RFC 4180 CSV, buffered.
final class EventOutput {
    let csv: Bool
    private var buffer = [UInt8]()

    static let csvColumns = [
        "lane", "scopeId", "sourceTruthTime", "canonicalTruthTime", "eventId", "connectionId", "sequence", "bytes", "streamId",
        "streamType", "schemaVersion", "viewId", "targetId", "commandType", "requestedBy", "metadataType", "payload",
    ]

    init(csv: Bool) {
        self.csv = csv
    }

    func writeHeader() {
        if csv { buffer.append(contentsOf: (Self.csvColumns.joined(separator: ",") + "\r\n").utf8) }
    }

    func write(_ event: Event) {
        if csv {
            var row = [String: String]()
            row["lane"] = event.lane.rawValue
            row["scopeId"] = event.scopeId
            row["sourceTruthTime"] = event.sourceTruthTime.rfc3339
            row["canonicalTruthTime"] = event.canonicalTruthTime.rfc3339
            row["eventId"] = event.eventId.hex
            switch event.fields {
            case .raw(let c, let s, let b):
                row["connectionId"] = c
                row["sequence"] = String(s)
                row["bytes"] = Data(b).base64EncodedString()
            case .parsed(let s, let t, let v, _):
                (row["streamId"], row["streamType"], row["schemaVersion"]) = (s, t, v)
            case .ui(let v, _):
                row["viewId"] = v
            case .command(let t, let c, let r, _):
                (row["targetId"], row["commandType"], row["requestedBy"]) = (t, c, r)
            case .metadata(let m, _):
                row["metadataType"] = m
            }
            row["payload"] = event.fields.payload?.description
            let line = Self.csvColumns.map { Self.csvField(row[$0] ?? "") }.joined(separator: ",")
            buffer.append(contentsOf: (line + "\r\n").utf8)
        } else {
            event.writeJSON(into: &buffer)
            buffer.append(UInt8(ascii: "\n"))
        }
        if buffer.count > 1 << 16 { flush() }
    }

    static func csvField(_ value: String) -> String {
        guard value.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return value }
        return "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    func flush() {
        buffer.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Foundation.write(1, raw.baseAddress! + offset, raw.count - offset)
                if n <= 0 { break }
                offset += n
            }
        }
        buffer.removeAll(keepingCapacity: true)
    }
}
