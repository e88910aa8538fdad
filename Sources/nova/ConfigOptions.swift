import ArgumentParser
import Foundation
import Logging
import NovaCore

/// The options every server subcommand shares: which configuration, and overrides of it.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "Configuration file (default: ./config.json when present, else built-in defaults).")
    var config: String?

    @Option(name: .long, help: "Listen on this host instead of server.host.")
    var host: String?

    @Option(name: .long, help: "Listen on this port instead of server.port (0 picks a free port).")
    var port: Int?

    @Flag(name: .long, help: "Print the effective configuration (secrets masked) and exit.")
    var printConfig = false

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = ProcessInfo.processInfo.environment["NOVA_LOG_LEVEL"] ?? "info"

    func validate() throws {
        if let port, !(0...65535).contains(port) {
            throw ValidationError("--port: must be between 0 and 65535, found \(port)")
        }
        if Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level: must be one of trace, debug, info, notice, warning, error, critical")
        }
    }

    /// The configuration file's settings with the command line's overrides applied.
    func load() throws -> NovaConfiguration {
        let path: String?
        if let config {
            guard FileManager.default.fileExists(atPath: config) else { throw CLIError("--config: \(config): no such file") }
            path = config
        } else {
            path = FileManager.default.fileExists(atPath: "config.json") ? "config.json" : nil
        }
        var configuration = NovaConfiguration()
        if let path {
            guard let data = FileManager.default.contents(atPath: path) else { throw CLIError("\(path): cannot be read") }
            do {
                configuration = try NovaConfiguration.load(json: Array(data))
            } catch {
                throw CLIError("\(path): \(error.description)")
            }
        }
        if let host { configuration.server.host = host }
        if let port { configuration.server.port = port }
        return configuration
    }

    /// Sends logs to standard error, once per process.
    func bootstrapLogging() -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = DeferredMetadataLogHandler(StreamLogHandler.standardError(label: label))
            handler.logLevel = level
            return handler
        }
        return Logger(label: "nova")
    }
}

/// StreamLogHandler with its metadata rendered when a message is logged, not when it is set:
/// StreamLogHandler renders its metadata into text on every change, and Hummingbird sets a request
/// id on each request's logger, so every request paid for a text that was almost never logged.
struct DeferredMetadataLogHandler: LogHandler {
    private var stream: StreamLogHandler
    var metadata: Logger.Metadata = [:]

    init(_ stream: StreamLogHandler) { self.stream = stream }

    var logLevel: Logger.Level {
        get { stream.logLevel }
        set { stream.logLevel = newValue }
    }

    var metadataProvider: Logger.MetadataProvider? {
        get { stream.metadataProvider }
        set { stream.metadataProvider = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var stream = stream
        stream.metadata = metadata
        stream.log(event: event)
    }
}

extension NovaConfiguration {
    /// Auth may be off only on loopback (api.md).
    func checkListenAddress() throws {
        let loopback = ["127.0.0.1", "::1", "localhost"].contains(server.host) || server.host.hasPrefix("127.")
        if !loopback, server.tokens.isEmpty {
            throw CLIError("server.host: \(server.host) is not loopback, and no server.tokens are configured; refusing to serve without authentication (add tokens, or listen on 127.0.0.1)")
        }
    }
}
