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
