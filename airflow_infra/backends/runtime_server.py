"""A warm runtime per environment for the local target.

Starting an interpreter and importing cloudpickle is most of a small task's cost. The
first call in an environment starts `runtime.py --serve` in it; that call and every
later one in this worker process run in a child forked from it: a fresh process per call
(own session, own measured memory, killed as a group), minus the start-up. The server
reads its stdin, so it exits when this process does.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from airflow_infra import runtime


class ServerGone(Exception):
    """The server process ended while a call was running (or could not take one)."""


class RuntimeServer:
    def __init__(self, python: Path, env: dict[str, str]):
        # -P: the runtime's folder must not shadow the standard library (this package has an operator.py).
        self.proc = subprocess.Popen(
            [str(python), "-u", "-P", runtime.__file__, "--serve"],
            cwd="/",
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.child_pid: int | None = None
        self._kill_requested = False
        self._lock = threading.Lock()
        # If the server dies mid-call, its orphaned child would hold the output pipe open:
        # kill the child too, so the call sees end of output at once.
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        self.proc.wait()
        with self._lock:
            self._kill_child()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, argv: list[str], cwd: Path, env: dict[str, str], on_line: Callable[[str], None]) -> int:
        """Run one call; stream its output to on_line; return its exit code (negative: signal)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._kill_requested = False
        try:
            self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "env": env}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ServerGone(str(exc)) from None
        try:
            for line in self.proc.stdout:
                if not line.startswith(runtime.CONTROL):
                    on_line(line.rstrip("\n"))
                    continue
                word, value = line[len(runtime.CONTROL):].split()
                if word == "pid":
                    with self._lock:
                        self.child_pid = int(value)
                        if self._kill_requested:
                            self._kill_child()
                else:
                    return int(value)
            raise ServerGone(f"exit code {self.proc.wait()}")
        finally:
            self.child_pid = None

    def kill_call(self) -> None:
        """Kill the running call's whole process group (Airflow's on_kill, or a timeout)."""
        with self._lock:
            self._kill_requested = True
            self._kill_child()

    def _kill_child(self) -> None:
        if self.child_pid is not None:
            try:
                os.killpg(self.child_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.alive:
            try:
                self.proc.stdin.close()  # the server's loop ends on EOF
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


_servers: dict[Path, RuntimeServer] = {}


def server_for(python: Path, env: dict[str, str]) -> RuntimeServer:
    server = _servers.get(python)
    if server is None or not server.alive:
        server = _servers[python] = RuntimeServer(python, env)
    return server


def forget(python: Path) -> None:
    server = _servers.pop(python, None)
    if server is not None:
        server.close()


@atexit.register
def _close_all() -> None:
    for python in list(_servers):
        forget(python)
