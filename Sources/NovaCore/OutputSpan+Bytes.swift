extension OutputSpan where Element == UInt8 {
    /// Appends the bytes of a literal (keys and punctuation of the JSON that answers write).
    @inlinable
    mutating func append(_ text: StaticString) {
        append(copying: UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// Appends `bytes` in one copy; the span must have room for them.
    @inlinable
    mutating func append(copying bytes: UnsafeRawBufferPointer) {
        withUnsafeMutableBufferPointer { buffer, count in
            precondition(buffer.count - count >= bytes.count, "OutputSpan: no room for \(bytes.count) bytes")
            UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buffer[count...])).copyMemory(from: bytes)
            count += bytes.count
        }
    }
}

extension Array where Element == UInt8 {
    /// Appends what `write` puts into at most `capacity` new bytes: the writers of answers know a
    /// bound of their output, and writing into reserved room skips the checks that `append` makes
    /// on every byte (perf: a third of the JSON writing of a query answer).
    @inlinable
    mutating func append(atMost capacity: Int, _ write: (inout OutputSpan<UInt8>) -> Void) {
        append(addingCapacity: capacity) { span in write(&span) }
    }
}
