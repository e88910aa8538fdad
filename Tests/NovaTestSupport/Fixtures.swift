import Foundation
import NIOSSL
import NovaCore
import Synchronization

/// The contract's vectors (a copy of `shared/spec/vectors`, kept identical by a test) and helpers
/// to read them.
public enum Fixtures {
    /// `Tests/Fixtures`, found from this file's location in the checkout.
    public static let directory: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    public static func vectorURL(_ name: String) -> URL {
        directory.appendingPathComponent("vectors").appendingPathComponent(name)
    }

    /// A vector file parsed by NovaCore's strict parser (which keeps number literals exact).
    public static func vector(_ name: String) throws -> JSONValue {
        try JSONParser.parse(Array(Data(contentsOf: vectorURL(name))))
    }

    /// The repository root (for the built `nova` binary and scripts).
    public static let repositoryRoot: URL = directory.deletingLastPathComponent().deletingLastPathComponent()
}

extension JSONValue {
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var arrayValue: [JSONValue] {
        if case .array(let a) = self { return a }
        return []
    }

    public var objectMembers: [JSONMember] {
        if case .object(let m) = self { return m }
        return []
    }

    /// Any valid JSON text for this value (canonical form, which is also valid JSON).
    public var text: String { String(decoding: CanonicalJSON.serialize(self), as: UTF8.self) }
}

/// A unique empty directory under the system's temporary directory, removed by `remove()`.
public struct TemporaryDirectory: Sendable {
    public let path: String

    public init(_ prefix: String = "nova-test") throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        path = base.path
    }

    public func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    public func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// The field whose name the rejection message of each `invalid-events.json` case must carry.
public enum VectorFields {
    public static let expected: [String: String] = [
        "unknown lane": "lane", "missing scopeId": "scopeId", "empty scopeId": "scopeId",
        "time not RFC 3339": "sourceTruthTime", "time without zone": "sourceTruthTime",
        "time before 1970": "sourceTruthTime", "impossible date": "sourceTruthTime",
        "sequence not an integer": "sequence", "sequence outside int64": "sequence", "sequence as string": "sequence",
        "bytes not base64": "bytes", "missing connectionId": "connectionId", "scopeId with NUL": "scopeId",
        "scopeId over 256 bytes": "scopeId", "payload not an object": "payload", "missing payload": "payload",
        "eventId given and wrong": "eventId",
    ]
}

/// The test-only TLS material of `Tests/Fixtures/tls` (see its README).
public enum TestTLS {
    static let directory = Fixtures.directory.appendingPathComponent("tls")
    /// The authority that signed the server certificate.
    public static var ca: String { directory.appendingPathComponent("ca.pem").path }
    /// An authority that signed nothing here.
    public static var otherCA: String { directory.appendingPathComponent("other-ca.pem").path }
    /// A certificate for `localhost` and `127.0.0.1`, and its key.
    public static var certificate: String { directory.appendingPathComponent("server.pem").path }
    public static var key: String { directory.appendingPathComponent("server.key").path }

    /// A client configuration that trusts `caFile` alone.
    public static func client(trusting caFile: String = ca) throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
        return configuration
    }
}

/// A small tmpfs of its own, for running out of disk for real. Mounting needs root (or
/// password-less sudo), as the test command has on a fresh machine; without it the test fails
/// and says so, never skips.
public struct SmallFilesystem: Sendable {
    public let path: String

    public static func mount(megabytes: Int) async throws -> SmallFilesystem {
        let directory = try TemporaryDirectory("nova-smallfs")
        let sudo = getuid() == 0 ? [] : ["sudo", "-n"]
        let err = directory.path + ".err"
        defer { try? FileManager.default.removeItem(atPath: err) }
        let status = try await runTool("/usr/bin/env", sudo + ["mount", "-t", "tmpfs", "-o", "size=\(megabytes)m,mode=1777", "tmpfs", directory.path], stderr: err)
        guard status == 0 else {
            let reason = (try? String(contentsOfFile: err, encoding: .utf8)) ?? ""
            directory.remove()
            throw ProcessError("could not mount a \(megabytes) MiB tmpfs (root or password-less sudo is needed): \(reason)")
        }
        return SmallFilesystem(path: directory.path)
    }

    public func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    public func unmount() async {
        let sudo = getuid() == 0 ? [] : ["sudo", "-n"]
        _ = try? await runTool("/usr/bin/env", sudo + ["umount", "-l", path])
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Waits for `task` to end, at most `limit` from when `started()` first holds; past it, says on
/// standard error what did not end and returns nil, leaving the task behind. For shutdowns inside
/// the libraries under test that were seen to wait forever on a loaded machine (a WebSocket
/// client's close handshake with a server that died, a PostgreSQL pool's `run()` cancelled while
/// it opened a connection): one of them held a whole test run, with no thread busy and nothing
/// said of where, until it was killed.
///
/// It returns as soon as the task ends: it used to look every 50 ms, which added up to 50 ms to
/// every bounded HTTP exchange of the end-to-end tests, and slowed their load generators.
@discardableResult
public func awaitEnd<T: Sendable>(
    of task: Task<T, any Error>, within limit: Duration, once started: @escaping @Sendable () -> Bool = { true }, _ what: String
) async -> Result<T, any Error>? {
    let first = FirstOf<Result<T, any Error>?>()
    let watcher = Task { first.settle(await task.result) }
    let timer = Task {
        // The limit counts from when `started` first holds (a script's end, say).
        while !started() { try await Task.sleep(for: .milliseconds(50)) }
        try await Task.sleep(for: limit)
        if first.settle(nil) {
            FileHandle.standardError.write(Data("test support: \(what) did not end within \(limit); left behind\n".utf8))
        }
    }
    // The waiting test cancelled: it waits no longer.
    let result = await withTaskCancellationHandler { await first.value } onCancel: { first.settle(nil) }
    timer.cancel()
    _ = watcher
    return result
}

/// The first of several values offered, for one waiter.
private final class FirstOf<Value: Sendable>: Sendable {
    private let state = Mutex<(value: Value?, settled: Bool, waiter: CheckedContinuation<Value, Never>?)>((nil, false, nil))

    /// Offers a value; true when it was the first.
    @discardableResult
    func settle(_ value: Value) -> Bool {
        let (first, waiter) = state.withLock { s -> (Bool, CheckedContinuation<Value, Never>?) in
            guard !s.settled else { return (false, nil) }
            s.settled = true
            s.value = value
            defer { s.waiter = nil }
            return (true, s.waiter)
        }
        waiter?.resume(returning: value)
        return first
    }

    var value: Value {
        get async {
            await withCheckedContinuation { continuation in
                let ready = state.withLock { s -> Bool in
                    if s.settled { return true }
                    s.waiter = continuation
                    return false
                }
                if ready { continuation.resume(returning: state.withLock { $0.value! }) }
            }
        }
    }
}
