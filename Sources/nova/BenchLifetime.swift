import Foundation
import Synchronization

/// A benchmark's processes and temporary stores end with it, however it ends.
///
/// Its `defer`s drop the temporary database and directory, and stop the recorders it started,
/// when it finishes or fails. A signal's default action skips all of that: Ctrl-C or a timeout
/// used to leave a `nova serve` running and a database of millions of events on the user's
/// PostgreSQL server. So SIGINT and SIGTERM are caught here, what must not outlive the benchmark
/// is removed, and the process exits as the signal would have it (128 + its number); its
/// children, told their parent's pid (``childEnvironment()``), stop on their own once it is gone,
/// even after a SIGKILL that nothing can catch.
enum BenchLifetime {
    /// The variable that asks a `nova` process to stop when its parent (that pid) is gone.
    static let parentVariable = "NOVA_EXIT_WITH_PARENT"

    private static let cleanups = Mutex<[@Sendable () -> Void]>([])

    /// Runs `cleanup` should SIGINT or SIGTERM stop this process (idempotent cleanups only: the
    /// benchmark's own `defer` may have run it already, or be running it).
    static func onSignal(_ cleanup: @escaping @Sendable () -> Void) {
        _ = signalHandlers
        cleanups.withLock { $0.append(cleanup) }
    }

    /// The environment of a child `nova` process: this one's, and its pid as the parent to outlive.
    static func childEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
        environment[parentVariable] = String(getpid())
        return environment
    }

    /// In a child started with ``childEnvironment()``: a thread that sends this process SIGTERM
    /// (a graceful stop for `nova serve` and `nova record`) once its parent is gone, which shows
    /// as a new parent pid. A variable inherited from further up (the parent is not the pid it
    /// names) is ignored.
    ///
    /// Such a child also starts with SIGINT and SIGTERM at their default actions: it inherits the
    /// benchmark's, which ignores them (its handlers take them), and would then outlive its SIGTERM
    /// wherever it installs no handler of its own (`nova verify`, `nova migrate`) or has not yet.
    static func exitWithParentIfAsked() {
        guard let value = ProcessInfo.processInfo.environment[parentVariable], let parent = pid_t(value), getppid() == parent else { return }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        Thread.detachNewThread {
            while getppid() == parent { usleep(200_000) }
            kill(getpid(), SIGTERM)
        }
    }

    /// Set once a signal's cleanups have begun.
    private static let stopping = Mutex(false)

    /// Installed once, on the first cleanup: the signals are ignored by default and taken by
    /// dispatch sources instead, which run on a dispatch queue, not on the concurrency pool that
    /// a cleanup may wait for. The benchmark itself runs on meanwhile, and fails as its database
    /// goes; should it reach `exit` first, that waits (an `atexit` hook) until the cleanups are
    /// done and the handler ends the process. A second signal ends it at once.
    nonisolated(unsafe) private static var signalSources: [any DispatchSourceSignal] = []
    private static let signalHandlers: Void = {
        atexit {
            while BenchLifetime.stopping.withLock({ $0 }) { pause() }
        }
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                if stopping.withLock({ was in defer { was = true }; return was }) { _exit(128 + sig) }
                FileHandle.standardError.write(Data("\nnova bench: stopped by signal \(sig); removing its temporary database and files\n".utf8))
                for cleanup in cleanups.withLock({ $0 }).reversed() { cleanup() }
                _exit(128 + sig)
            }
            source.resume()
            signalSources.append(source)
        }
    }()
}
