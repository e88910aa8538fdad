import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NovaCore
import NovaSync

/// `nova sync status|repair|forget`: the edge's outbox seen from the command line, repair of what
/// `nova verify` finds missing at the hub, and a retired site forgotten at the hub.
struct SyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Sync state of an edge recorder or a hub, repair of what the hub is missing, a retired site forgotten.",
        subcommands: [SyncStatusCommand.self, SyncRepairCommand.self, SyncForgetCommand.self]
    )
}

struct SyncStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Print a running recorder's GET /v1/sync/status (or a hub's GET /v1/sync/sites with --sites).",
        discussion: """
            The recorder is found at server.host:server.port of the configuration, or at --url.
            """
    )

    @OptionGroup var server: ServerOptions
    @Flag(help: "Ask a hub for every site's watermarks instead.") var sites = false

    func run() async throws {
        print(try await server.call(sites ? "/v1/sync/sites" : "/v1/sync/status"), terminator: "")
    }
}

struct SyncForgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget",
        abstract: "Make a hub forget a retired site's watermarks (DELETE /v1/sync/sites/<site>); its events stay.",
        discussion: """
            A site that no longer ships keeps its last completeThrough at the hub, which holds back the \
            Nova-Complete-Through of every answer for good. Forgetting it releases that. A site still \
            shipping comes back by itself, re-sending what it holds (the hub dedupes it). Needs an admin \
            token (--token-env). The hub is found at server.host:server.port of the configuration, or at \
            --url.
            """
    )

    @OptionGroup var server: ServerOptions
    @Argument(help: "The siteId to forget.") var siteId: String

    func validate() throws {
        guard !siteId.isEmpty else { throw ValidationError("siteId: must not be empty") }
    }

    func run() async throws {
        let path = "/v1/sync/sites/" + (siteId.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? siteId)
        print(try await server.call(path, method: .DELETE), terminator: "")
    }
}

/// Where a running recorder or hub is, and how to ask it.
struct ServerOptions: ParsableArguments {
    @OptionGroup var options: ConfigOptions
    @Option(help: "Base URL of the recorder or hub (default: from the configuration).") var url: String?
    @Option(help: "Environment variable holding a token with the role the route needs.") var tokenEnv: String = "NOVA_TOKEN"
    @Option(help: "PEM file of the authority that signed an https:// server's certificate (default: the system's).") var caFile: String?

    /// The body of a 200 answer to `path`; anything else is an error quoting the answer.
    func call(_ path: String, method: HTTPMethod = .GET) async throws -> String {
        let config = try options.load()
        let base = url ?? "\(config.server.tls == nil ? "http" : "https")://\(config.server.host):\(config.server.port)"
        let http = try SyncClient.http(trusting: caFile, key: "--ca-file")
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        if let token = ProcessInfo.processInfo.environment[tokenEnv], !token.isEmpty {
            request.headers.add(name: "Authorization", value: "Bearer \(token)")
        }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .seconds(10))
        } catch {
            throw CLIError("\(base): no answer (is the server running?): \(error)")
        }
        let body = String(buffer: try await response.body.collect(upTo: 16 << 20))
        guard response.status.code == 200 else { throw CLIError("\(base) answered \(response.status.code): \(body)") }
        return body
    }
}

struct SyncRepairCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repair",
        abstract: "Compare this edge's store with the hub, re-ship the events of every differing bucket, then compare again.",
        discussion: """
            Reads the edge store of the configuration (database.sqlite.path; a running recorder may keep \
            writing) and the hub at sync.upstream with the site's sync token (sync.token_env). Events the \
            hub already holds are deduped there, so repeating a repair is harmless. Without --scope, every \
            scope of the edge store. Exit status 0 when the stores agree afterwards, 1 when they still \
            differ, 2 when the repair could not run (the hub unreachable or refusing, a --scope neither \
            side holds).
            """
    )

    @OptionGroup var options: ConfigOptions
    @OptionGroup var selection: DigestSelection

    func run() async throws {
        let status = StatusLine()
        try await exitingTwoOnError(status) { try await repair(status) }
    }

    private func repair(_ status: StatusLine) async throws {
        let config = try options.load()
        guard config.database.type == .sqlite else { throw CLIError("database.type: sync repair runs on an edge's sqlite store") }
        let token = ProcessInfo.processInfo.environment[config.sync.tokenEnv].flatMap { $0.isEmpty ? nil : $0 }
        let client = SyncClient(upstream: config.sync.upstream, token: token, gzip: config.sync.compression == "gzip", http: try SyncClient.http(trusting: selection.caFile ?? config.sync.caFile, key: selection.caFile == nil ? "sync.caFile" : "--ca-file"))
        let hub = DigestSide(client: client)
        let locator = "sqlite:\(config.database.sqlite.path)"
        try await StoreLocator(locator).withStore(create: false, logger: toolLogger()) { store in
            let edge = DigestSide(store: store, name: locator)
            var verification = selection.verification
            if verification.scopes == nil { verification.scopes = try await store.stats().lanes.map(\.scopeId).uniqued() }
            let before = try await verification.run(edge, hub) { status.update("verify: \($0)") }
            status.finish()
            let differing = before.reduce(0) { $0 + $1.differences.count }
            guard differing > 0, before.allSatisfy(\.heldByEither) else {
                _ = report(before, left: locator, right: config.sync.upstream, bucket: selection.bucket)
                try refuseUnheldScopes(before)
                print("nothing to repair")
                return
            }
            print("found \(differing) differing buckets; re-shipping the edge's events of them")
            let repair = Repair(siteId: config.core.siteId, batchSize: config.sync.batchSize, maxBatchBytes: config.sync.maxBatchBytes)
            let sent = try await repair.run(
                before, edge: store, timebase: verification.timebase, bucketMicros: verification.bucketMicros,
                deliver: { batch in
                    switch await client.ship(batch) {
                    case .acknowledged: break
                    case .refused(let why), .unreachable(let why), .tooLarge(let why):
                        throw CLIError("the hub did not take a repair batch: \(why)")
                    case .overloaded:
                        throw CLIError("the hub is busy (503); run the repair again later")
                    case .gap(let watermark):
                        throw CLIError("the hub answered a repair batch with a gap at ackedSeq \(watermark.ackedSeq), which it never should; nothing more was sent")
                    }
                }
            ) { status.update($0) }
            status.finish()
            print("re-sent \(sent) events")
            let after = try await verification.run(edge, hub) { status.update("verify again: \($0)") }
            status.finish()
            if report(after, left: locator, right: config.sync.upstream, bucket: selection.bucket) > 0 {
                print("the hub still differs: where it holds more than this edge (right > left), the events came from elsewhere "
                    + "(another store of the site) or this edge's retention removed them; repair cannot add them from here")
                throw ExitCode(1)
            }
        }
    }
}

extension Array where Element == String {
    func uniqued() -> [String] {
        var seen = Set<String>()
        return filter { seen.insert($0).inserted }
    }
}
