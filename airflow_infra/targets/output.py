"""A call's output as log lines, whatever its shape.

Output arrives in chunks that need not end at a newline, may hold no newline at all for
gigabytes, and may contain any bytes. Lines are cut at newlines and, past MAX_LINE bytes,
at that length, so memory stays bounded and nothing waits for a newline that never comes;
what is left at the end is flushed as a last line.
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_LINE = 64 * 1024


class OutputLines:
    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._pending = b""

    def feed(self, chunk: bytes) -> Iterator[str]:
        data = self._pending + chunk
        start = 0
        while True:
            newline = data.find(b"\n", start, start + self.max_line + 1)
            if newline >= 0:
                yield _text(data[start:newline])
                start = newline + 1
            elif len(data) - start > self.max_line:
                yield _text(data[start : start + self.max_line])
                start += self.max_line
            else:
                break
        self._pending = data[start:]

    def flush(self) -> Iterator[str]:
        if self._pending:
            yield _text(self._pending)
            self._pending = b""


def _text(line: bytes) -> str:
    return line.rstrip(b"\r").decode(errors="replace")
