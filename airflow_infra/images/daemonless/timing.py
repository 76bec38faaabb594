"""Where a daemonless build's time goes: one log line per build (and the benchmark's breakdown).

Phases are wall seconds on the caller's thread; `add` sums seconds spent in worker threads
(compression, uploads), so those may add up to more than the wall time they overlapped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.2f}s" for name, seconds in self.seconds.items())
