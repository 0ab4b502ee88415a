"""NDJSON framing: a byte stream, in whatever blocks it arrives, cut into numbered lines. Pure.

Lines end with ``\\n`` (a ``\\r`` before it is JSON whitespace and harmless); the last line
needs no terminator. No line may exceed ``max_line_bytes``: a record is a few hundred bytes,
so a longer line is a mistake (a missing newline, a document posted as NDJSON) and is
reported as soon as it is seen, without buffering it whole.
"""

from __future__ import annotations

__all__ = ["MAX_LINE_BYTES", "LineTooLong", "NdjsonFramer"]

MAX_LINE_BYTES = 16 * 1024
"""Far above any valid record (about 1.2 kB at the contract's field limits, 6 kB escaped)."""


class LineTooLong(ValueError):
    def __init__(self, line: int, limit: int) -> None:
        self.line = line
        self.limit = limit
        super().__init__(f"line {line} is longer than {limit} bytes")


class NdjsonFramer:
    """Feed blocks in, get complete lines out, numbered from ``first_line``.

    ``feed`` returns ``(number of the first line returned, lines)`` so that callers can
    number lines without a tuple per line; ``finish`` returns the unterminated last line.
    """

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES, first_line: int = 1) -> None:
        self._max = max_line_bytes
        self._next = first_line
        self._pending = b""

    @property
    def next_line(self) -> int:
        """The number the next line will have."""
        return self._next

    def feed(self, block: bytes) -> tuple[int, list[bytes]]:
        data = self._pending + block if self._pending else block
        lines = data.split(b"\n")
        self._pending = lines.pop()
        first = self._next
        if lines and max(map(len, lines)) > self._max:
            offender = next(i for i, line in enumerate(lines) if len(line) > self._max)
            raise LineTooLong(first + offender, self._max)
        self._next += len(lines)
        if len(self._pending) > self._max:
            raise LineTooLong(self._next, self._max)
        return first, lines

    def finish(self) -> tuple[int, list[bytes]]:
        last, self._pending = self._pending, b""
        first = self._next
        if last:
            self._next += 1
            return first, [last]
        return first, []
