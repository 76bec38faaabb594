"""A call's output as log lines, whatever its shape.

Output arrives in chunks that need not end at a newline, may hold no newline at all for
gigabytes, and may contain any bytes. Lines are cut at newlines and, past MAX_LINE bytes,
at that length, so memory stays bounded and nothing waits for a newline that never comes;
what is left at the end is flushed as a last line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from airflow_infra.runtime import LOG_MARK

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


def log_line(log: logging.Logger, line: str) -> None:
    """Pass one line of a call's output to the task log: a log record from the function
    (marked by the runtime with its level and logger) at its own level, anything else as info."""
    if line.startswith(LOG_MARK):
        level_name, _, rest = line[len(LOG_MARK) :].partition(" ")
        level = logging.getLevelName(level_name)
        if isinstance(level, int):
            name, _, message = rest.partition(": ")
            log.log(level, "%s: %s", name, message)
            return
    log.info("%s", line)
