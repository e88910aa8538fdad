import ArgumentParser
import Foundation
import NovaCore
import NovaSync

/// `nova verify A B`: bucket-by-bucket comparison of two stores (sync.md, Verification).
struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Compare two stores bucket by bucket (counts and XOR digests of the eventIds); exit 1 on any difference.",
        discussion: """
            Each side is a store locator (sqlite:PATH, postgres://USER@HOST:PORT/DB) or the base URL of a \
            recorder or hub (read through GET /v1/digests). Without --scope, every scope either side holds; \
            without --from/--to, the span the scope covers on either side.
            Examples:
              nova verify sqlite:data/nova.db http://hub:8081 --scope site-a --bucket 1m
              nova verify sqlite:data/nova.db postgres://nova@db:5432/nova
              EDGE_TOKEN=… HUB_TOKEN=… nova verify http://edge:8080 http://hub:8081 --left-token-env EDGE_TOKEN --right-token-env HUB_TOKEN
            Exit status: 0 when equal, 1 with the differing buckets listed, 2 or more on an error \
            (a --scope that neither side holds any event of is one: most likely a misspelling).
            """
    )

    @Argument(help: "The first store: a locator or a server URL.") var left: String
    @Argument(help: "The second store: a locator or a server URL.") var right: String
    @OptionGroup var selection: DigestSelection
    @Option(help: "Environment variable holding the first server's token, where the two differ (default: --token-env).") var leftTokenEnv: String?
    @Option(help: "Environment variable holding the second server's token (default: --token-env).") var rightTokenEnv: String?

    /// An edge and a hub have different read tokens; one variable serves both when they do not.
    func token(_ variable: String?) -> String? {
        guard let variable else { return selection.token }
        return ProcessInfo.processInfo.environment[variable].flatMap { $0.isEmpty ? nil : $0 }
    }

    func run() async throws {
        let status = StatusLine()
        let results = try await exitingTwoOnError(status) {
            try await withSide(left, token: token(leftTokenEnv), caFile: selection.caFile) { a in
                try await withSide(right, token: token(rightTokenEnv), caFile: selection.caFile) { b in
                    try await selection.verification.run(a, b) { status.update($0) }
                }
            }
        }
        status.finish()
        let differences = report(results, left: left, right: right, bucket: selection.bucket)
        try refuseUnheldScopes(results)
        if differences > 0 { throw ExitCode(1) }
    }
}

/// Which scopes, range, timebase, lanes and bucket width a comparison covers.
struct DigestSelection: ParsableArguments {
    @Option(help: "A scope to compare (repeatable; default: every scope either side holds).") var scope: [String] = []
    @Option(help: "Start of the compared range (RFC 3339; default: the scope's first event).") var from: String?
    @Option(help: "End of the compared range, exclusive (RFC 3339; default: after the scope's last event).") var to: String?
    @Option(help: "Bucket width: 30s, 1m, 1h, 1d, …") var bucket: String = "1m"
    @Option(help: "canonical (default) or source.") var timebase: String = "canonical"
    @Option(help: "One lane or a comma list (default: all five).") var lane: String?
    @Option(help: "Environment variable holding a bearer token for a server URL.") var tokenEnv: String = "NOVA_TOKEN"
    @Option(help: "PEM file of the authority that signed an https:// server's certificate (default: the system's).") var caFile: String?

    func validate() throws {
        _ = try verificationOrError()
    }

    var verification: Verification { try! verificationOrError() }

    private func verificationOrError() throws -> Verification {
        var v = Verification()
        guard let width = DigestRequest.parseBucket(bucket) else {
            throw ValidationError("--bucket: must be a positive width up to 36500d, such as 30s, 1m, 1h or 1d, found \(bucket)")
        }
        v.bucketMicros = width
        guard let tb = Timebase(rawValue: timebase) else { throw ValidationError("--timebase: must be canonical or source, found \(timebase)") }
        v.timebase = tb
        if let lane {
            switch Lane.parseList(lane) {
            case .success(let lanes): v.lanes = lanes
            case .failure(let error): throw ValidationError("--lane: \(error.description)")
            }
        }
        if let bad = scope.first(where: { $0.isEmpty || $0.utf8.count > 256 }) {
            throw ValidationError("--scope: must be 1 to 256 bytes (a scopeId), found \(bad.utf8.count) bytes")
        }
        if !scope.isEmpty { v.scopes = scope }
        func time(_ text: String?, _ name: String) throws -> Timestamp? {
            guard let text else { return nil }
            do {
                return try Timestamp(rfc3339: text)
            } catch {
                throw ValidationError("--\(name): \(error.description)")
            }
        }
        let start = try time(from, "from")
        let end = try time(to, "to")
        if start != nil || end != nil {
            let lower = start ?? .min
            let upper = end ?? .endOfTime
            guard lower <= upper else { throw ValidationError("--from: must not be after --to") }
            v.range = lower..<upper
        }
        return v
    }

    var token: String? { ProcessInfo.processInfo.environment[tokenEnv].flatMap { $0.isEmpty ? nil : $0 } }
}

extension AsyncParsableCommand {
    /// Runs `body`; an error other than an exit code is printed and exits 2. The comparing
    /// commands keep exit 1 for "the stores differ", which a comparison that could not run is not.
    func exitingTwoOnError<T>(_ status: StatusLine, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let exit as ExitCode {
            throw exit
        } catch {
            status.finish()
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }

    /// Runs `body` with one side of a comparison open: a store locator, or a server URL.
    func withSide<T>(_ text: String, token: String?, caFile: String?, _ body: (DigestSide) async throws -> T) async throws -> T {
        if text.hasPrefix("http://") || text.hasPrefix("https://") {
            return try await body(DigestSide(client: SyncClient(upstream: text, token: token, http: try SyncClient.http(trusting: caFile, key: "--ca-file"))))
        }
        return try await StoreLocator(text).withStore(create: false, readOnly: true, logger: toolLogger()) { store in
            try await body(DigestSide(store: store, name: text))
        }
    }

    /// Prints the comparison; returns the number of differing buckets.
    func report(_ results: [Verification.ScopeResult], left: String, right: String, bucket: String) -> Int {
        var differing = 0
        print("nova verify: \(left) (left) vs \(right) (right), buckets of \(bucket)")
        for r in results {
            guard r.heldByEither else {
                print("  scope \(r.scopeId): neither side holds any event of this scope")
                continue
            }
            let verdict = r.differences.isEmpty ? "equal" : "\(r.differences.count) differing buckets"
            // The end is exclusive; after the last representable time it has no RFC 3339 form.
            let end = r.range.upperBound > Timestamp.max ? "\(Timestamp.max) (inclusive)" : "\(r.range.upperBound)"
            print("  scope \(r.scopeId): \(r.leftEvents) vs \(r.rightEvents) events in \(r.buckets) buckets, \(r.range.lowerBound) to \(end): \(verdict)")
            for d in r.differences.prefix(100) {
                print("    \(d.lane.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0)) \(d.bucketStart)  left \(d.left)  right \(d.right)")
            }
            if r.differences.count > 100 { print("    … and \(r.differences.count - 100) more") }
            differing += r.differences.count
        }
        if differing == 0, results.contains(where: { !$0.heldByEither }) {
            print("result: not compared (a scope neither side holds)")
        } else {
            print(differing == 0 ? "result: equal" : "result: DIFFERENT (\(differing) buckets)")
        }
        return differing
    }

    /// Exit 2 when a scope asked for is held by neither side: there was nothing to compare.
    func refuseUnheldScopes(_ results: [Verification.ScopeResult]) throws {
        let unheld = results.filter { !$0.heldByEither }.map(\.scopeId)
        guard !unheld.isEmpty else { return }
        let names = unheld.map { "\"\($0)\"" }.joined(separator: ", ")
        FileHandle.standardError.write(Data("Error: --scope: neither side holds any event of \(names); check the spelling (scopes are case-sensitive)\n".utf8))
        throw ExitCode(2)
    }
}
