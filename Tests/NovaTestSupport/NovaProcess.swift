import Foundation

/// A real `nova` process for end-to-end tests: started with arguments, its output captured to
/// files, killed for real.
public final class NovaProcess: @unchecked Sendable {
    public let process = Process()
    public let stdoutPath: String
    public let stderrPath: String

    /// The `nova` binary built next to the test bundle (or `NOVA_BIN`).
    public static var binary: String {
        if let env = ProcessInfo.processInfo.environment["NOVA_BIN"] { return env }
        let testBinary = URL(fileURLWithPath: CommandLine.arguments[0])
        var dir = testBinary.deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("nova").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return Fixtures.repositoryRoot.appendingPathComponent(".build/debug/nova").path
    }

    public init(_ arguments: [String], directory: TemporaryDirectory, name: String = "nova", environment: [String: String] = [:]) throws {
        stdoutPath = directory.file("\(name)-\(UUID().uuidString.prefix(6)).out")
        stderrPath = directory.file("\(name)-\(UUID().uuidString.prefix(6)).err")
        FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory.path)
        let out = FileHandle(forWritingAtPath: stdoutPath)
        let err = FileHandle(forWritingAtPath: stderrPath)
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        // The child has its own copies; ours stayed open for as long as the process object
        // lived (hundreds of files, deleted with their test directories, in one run).
        defer {
            try? out?.close()
            try? err?.close()
        }
        try process.run()
    }

    public var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    /// Waits for the "nova: listening on http://HOST:PORT" line and returns the base URL.
    public func waitUntilListening(timeout: Duration = .seconds(60)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = stdout.split(separator: "\n").first(where: { $0.hasPrefix("nova: listening on ") }) {
                return String(line.dropFirst("nova: listening on ".count).split(separator: " ")[0])
            }
            if !process.isRunning {
                throw ProcessError("nova exited (\(process.terminationStatus)) before listening: \(stderr)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ProcessError("nova did not start listening within \(timeout): \(stderr)")
    }

    public func kill(_ signal: Int32 = SIGKILL) {
        Foundation.kill(process.processIdentifier, signal)
    }

    /// Waits for the process to end and returns its exit status.
    @discardableResult
    public func wait(timeout: Duration = .seconds(60)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                kill()
                // What it printed last says where it hung.
                throw ProcessError("nova \(process.arguments?.prefix(2).joined(separator: " ") ?? "") did not exit within \(timeout); its output ended with: \(stdout.suffix(1_500)) | stderr: \(stderr.suffix(1_500))")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        return process.terminationStatus
    }

    /// Runs `nova` to completion: (status, stdout, stderr).
    public static func run(_ arguments: [String], directory: TemporaryDirectory, environment: [String: String] = [:]) async throws -> (status: Int32, stdout: String, stderr: String) {
        let p = try NovaProcess(arguments, directory: directory, environment: environment)
        let status = try await p.wait(timeout: .seconds(300))
        return (status, p.stdout, p.stderr)
    }
}

/// Runs a helper program (a shell script) to completion and returns its exit status, polling
/// `waitpid` without blocking a thread. Spawned and reaped here rather than through Foundation's
/// `Process`, which was seen to leave such a child unreaped (a zombie) from inside the test
/// process, hanging the test.
@discardableResult
public func runTool(_ executable: String, _ arguments: [String], stdout: String? = nil, stderr: String? = nil) async throws -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdout ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, stderr ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    // Nothing else of the test process goes with the child. A private PostgreSQL cluster started
    // from here kept the test's open sockets to the shared cluster (they are not close-on-exec),
    // so connections that the tests had closed stayed open on the server until that private
    // cluster stopped, and the shared cluster ran out of its connection slots.
    // (glibc 2.34+; Swift's Glibc module does not export it, so it is looked up by name.)
    typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let closeFrom = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else {
        throw ProcessError("posix_spawn_file_actions_addclosefrom_np is missing (glibc 2.34 or later is needed)")
    }
    _ = unsafeBitCast(closeFrom, to: CloseFrom.self)(&actions, 3)
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    // The child starts with no signal blocked and every signal at its default: it inherits the
    // spawning thread's mask otherwise, and a script run from a test thread could not stop its
    // own children with `kill` (SIGTERM stayed blocked in them).
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attributes, &none)
    var all = sigset_t()
    sigfillset(&all)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
    guard spawned == 0 else { throw ProcessError("cannot run \(executable): error \(spawned)") }
    var status: Int32 = 0
    while true {
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid { break }
        if r < 0 { throw ProcessError("waitpid failed for \(executable)") }
        try await Task.sleep(for: .milliseconds(20))
    }
    // WIFEXITED / WEXITSTATUS
    return (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
}

public struct ProcessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A loopback TCP port that was free a moment ago, for a process that must keep its port across
/// restarts (a hub an edge ships to).
public func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ProcessError("socket() failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    guard bound == 0 else { throw ProcessError("bind() failed") }
    let named = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    guard named == 0 else { throw ProcessError("getsockname() failed") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Polls `condition` until it holds; fails naming `what` after `timeout`.
public func waitFor(_ what: String, timeout: Duration = .seconds(90), _ condition: () async -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return }
        try await Task.sleep(for: .milliseconds(200))
    }
    throw ProcessError("timed out waiting for \(what)")
}
