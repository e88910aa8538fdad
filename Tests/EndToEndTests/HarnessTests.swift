import Foundation
import NovaTestSupport
import Testing

/// The harness's bound on library shutdowns and HTTP exchanges: it must answer with the task's
/// result, give up at its limit, and give up when the waiting test is cancelled.
@Suite struct HarnessTests {
    @Test func awaitEndAnswersAtOnceGivesUpAtItsLimitAndOnCancellation() async throws {
        let quick = Task<Int, any Error> { 7 }
        // (How soon is not timed here: in a full run the test process's two threads are busy.)
        #expect(try await awaitEnd(of: quick, within: .seconds(30), "a finished task")?.get() == 7)

        let never = Task { try await Task.sleep(for: .seconds(3_600)); return 0 }
        defer { never.cancel() }
        let bounded = ContinuousClock.now
        #expect(await awaitEnd(of: never, within: .milliseconds(300), "a task that never ends") == nil)
        #expect(ContinuousClock.now - bounded < .seconds(60), "the limit ends the wait")

        let waiting = Task { await awaitEnd(of: never, within: .seconds(3_600), "a task that never ends") }
        try await Task.sleep(for: .milliseconds(100))
        waiting.cancel()
        #expect(await waiting.value == nil, "a cancelled wait ends")
    }
}

extension HarnessTests {
    /// A server that reads a WebSocket upgrade request and closes the connection without an
    /// answer (a recorder killed mid-handshake): the client library would wait for the answer for
    /// ever (NIO's typed upgrade handler does not fail its promise when the channel goes
    /// inactive), which froze a crash-campaign run; the harness gives up at its connect timeout.
    @Test(.timeLimit(.minutes(1))) func aStreamWhoseServerHangsUpBeforeTheUpgradeFailsInsteadOfWaiting() async throws {
        let listener = try HangUpListener()
        defer { listener.close() }
        let started = ContinuousClock.now
        await #expect(throws: (any Error).self) {
            try await withStream(port: listener.port, query: "mode=live", connectTimeout: .seconds(2)) { _ in }
        }
        #expect(ContinuousClock.now - started < .seconds(30), "the connect timeout ends the wait")
    }
}

/// Accepts connections on a loopback port, reads each one's request head and closes it.
final class HangUpListener: Sendable {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && listen(fd, 8) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard fd >= 0, bound else {
            let failure = errno
            if fd >= 0 { Glibc.close(fd) }
            throw ProcessError("a loopback listener could not be opened: errno \(failure)")
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        // The thread owns the socket and closes it when `accept` fails (after `close()` shuts it
        // down): closed from outside, its number could be reused by another test's socket before
        // the thread's next `accept`.
        Thread.detachNewThread {
            while true {
                let connection = accept(fd, nil, nil)
                guard connection >= 0 else {
                    Glibc.close(fd)
                    return
                }
                var head = [UInt8]()
                var chunk = [UInt8](repeating: 0, count: 4_096)
                while !head.suffix(4).elementsEqual(Array("\r\n\r\n".utf8)) {
                    let n = recv(connection, &chunk, chunk.count, 0)
                    guard n > 0 else { break }
                    head += chunk[..<n]
                }
                Glibc.close(connection)
            }
        }
    }

    /// Ends the listening: its thread's `accept` fails, and the thread closes the socket.
    func close() {
        shutdown(fd, Int32(SHUT_RDWR))
    }
}
