import Foundation

/// Free-text progress of a long operation on standard error: one line rewritten in place on a
/// terminal, otherwise a plain line every few seconds (so logs of scripted runs stay short).
final class StatusLine: @unchecked Sendable {
    private let lock = NSLock()
    private var lastPrint = ContinuousClock.now - .seconds(60)
    private var shown = false
    private let tty = isatty(STDERR_FILENO) == 1

    func update(_ text: String) {
        lock.lock()
        defer { lock.unlock() }
        let now = ContinuousClock.now
        guard now - lastPrint > (tty ? .milliseconds(200) : .seconds(5)) else { return }
        lastPrint = now
        shown = tty
        FileHandle.standardError.write(Data((tty ? "\r\u{1B}[K" + text : text + "\n").utf8))
    }

    /// Ends the rewritten line, if one is showing.
    func finish() {
        lock.lock()
        defer { lock.unlock() }
        if shown { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        shown = false
    }
}
