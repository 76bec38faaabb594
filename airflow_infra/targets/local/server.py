"""A warm runtime per environment for the local target.

Starting an interpreter and importing cloudpickle is most of a small task's cost. The
first call in an environment starts `runtime.py --serve` in it; that call and every
later one in this worker process run in a child forked from it: a fresh process per call
(own session, own measured memory, killed as a group), minus the start-up.

The server's word and the call's output travel apart, so no output can be taken for the
server's word (see runtime.serve for the server's side):
- control: one Unix socket pair per server, newline-delimited JSON that only this module
  and the server write (the forked child closes its copy). Every message names its call.
- output: a fresh pipe per call. Its write end goes to the server with the request and
  becomes the child's stdout and stderr; its bytes only ever become log lines.
The server exits when its end of the socket reports EOF, so it does not outlive this process.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from airflow_infra import runtime
from airflow_infra.targets.output import OutputLines

# How long output is still read once the call has exited. The server has killed the call's
# process group by then, so only a process that left the group (setsid) can hold the pipe
# open; what the call itself wrote is already in the pipe and is read in microseconds.
EXIT_GRACE = 2.0


class ServerGone(Exception):
    """The server process died, or could not take the call."""


class RuntimeServer:
    def __init__(self, python: Path, env: dict[str, str]):
        self._sock, theirs = socket.socketpair()
        self._errors = tempfile.TemporaryFile()  # the server's own crash output, quoted by ServerGone
        try:
            # -P: the runtime's folder must not shadow the standard library (this package has an operator.py).
            self.proc = subprocess.Popen(
                [str(python), "-u", "-P", runtime.__file__, "--serve"],
                cwd="/",
                env={**env, runtime.CONTROL: str(theirs.fileno())},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._errors,
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        except OSError as exc:
            self._sock.close()
            self._errors.close()
            raise ServerGone(f"cannot start {python}: {exc}") from None
        finally:
            theirs.close()  # only the server may hold that end: its death must be EOF here
        self._io = threading.Lock()  # one call at a time: held by start, and by stream until the call has ended
        self._pending: list[dict[str, Any]] = []  # messages received, not yet taken
        self._buffer = b""
        self._last_id = 0
        self._current: RunningCall | None = None
        self._gone = False
        threading.Thread(target=self._reap, daemon=True).start()

    @property
    def alive(self) -> bool:
        return not self._gone and self.proc.poll() is None

    def start(
        self, argv: list[str], cwd: Path, env: dict[str, str], connections: dict[str, Any] | None = None,
        cgroup: list[str] | None = None, outlive: dict[str, Any] | None = None,
    ) -> RunningCall:
        """Hand the call to the server; returns once its pid is known.

        `cgroup`: the `cgroup.procs` files of the call's cgroups (cgroups.py); the forked
        child joins them before it runs anything of the call.

        `connections`: the declared connections' values. They travel in this request only,
        over the socket, and the forked child installs them in its own memory and
        environment: they never reach the server's environment (which every later call
        inherits), the worker's, or a file.

        `outlive` ({"timeout": seconds or None}): the call is durable. The server gets a copy
        of the output pipe's read end too, so that if this process dies the call runs on
        and the server keeps its output and exit in the call's folder (runtime.serve)."""
        with self._io:
            if not self.alive:
                raise ServerGone(self._describe_end())
            previous = self._current
            if previous is not None and previous.exit_code is None:
                # Started but never streamed to its end (the task was unwinding): end it, and
                # read up to its exit so that the server is in step for this call.
                previous.kill()
                previous._close_output()
                previous._finish(self._await(previous._id, "exit"))
            self._last_id += 1
            call = self._current = RunningCall(self, self._last_id)
            read_end, write_end = os.pipe()
            call._output = read_end
            request = json.dumps(
                {"call": call._id, "argv": argv, "cwd": str(cwd), "env": env, "connections": connections or {},
                 "cgroup": cgroup or [], **({"outlive": outlive} if outlive is not None else {})}
            ).encode() + b"\n"
            fds = [write_end] + ([os.dup(read_end)] if outlive is not None else [])
            try:
                sent = socket.send_fds(self._sock, [request], fds)
                self._sock.sendall(request[sent:])  # a signal can cut a large send short
            except OSError:
                call._close_output()
                raise self._died() from None
            finally:
                for fd in fds:
                    os.close(fd)  # the child's copy must be the only writer, or the output never ends
            try:
                call.pid = self._await(call._id, "pid")
            except ServerGone:
                call._close_output()
                raise
            return call

    def close(self) -> None:
        if self._current is not None:
            self._current._abandon()  # the server reads EOF only between calls
        try:
            self._sock.shutdown(socket.SHUT_WR)  # the server's loop ends on EOF
        except OSError:
            pass
        if self._current is not None and self._current.detached:
            self._gone = True  # it follows the call to its end, then exits: not ours to wait for
            return
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._gone = True
        if self._io.acquire(blocking=False):  # not under a thread still reading the socket
            try:
                self._sock.close()
                self._errors.close()
            finally:
                self._io.release()

    # Control messages; the callers hold self._io.

    def _receive(self) -> None:
        """Read what the socket holds (blocking until something arrives) into _pending."""
        try:
            data = self._sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            raise self._died()
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        self._pending += [json.loads(line) for line in lines]

    def _take(self, call_id: int, key: str) -> Any:
        """The value of the first pending message about `call_id` that has `key`, or None.

        Messages before it are dropped: they belong to calls already settled, or say what is known.
        """
        while self._pending:
            message = self._pending.pop(0)
            if message.get("call") == call_id and key in message:
                return message[key]
        return None

    def _await(self, call_id: int, key: str) -> Any:
        while (value := self._take(call_id, key)) is None:
            self._receive()
        return value

    # The server's death.

    def _reap(self) -> None:
        # If the server dies, nobody waits for its child any more: end the call (and its
        # group) at once, whether or not someone is streaming it.
        self.proc.wait()
        self._gone = True
        if self._current is not None:
            self._current._abandon()

    def _died(self) -> ServerGone:
        self._gone = True
        if self._current is not None:
            self._current._abandon()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # EOF without an exit: the server is broken anyway
            self.proc.kill()
        return ServerGone(self._describe_end())

    def _describe_end(self) -> str:
        text = f"exit code {self.proc.poll()}"
        try:
            self._errors.seek(max(0, os.fstat(self._errors.fileno()).st_size - 2000))
            tail = self._errors.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            tail = ""
        return f"{text}: {tail.splitlines()[-1]}" if tail else text


class RunningCall:
    """One call in a child of the server: its pid, its output, its exit code."""

    def __init__(self, server: RuntimeServer, call_id: int):
        self.pid = 0
        self.exit_code: int | None = None
        self._server = server
        self._id = call_id
        self._output: int | None = None
        # Reentrant: kill() may run in a signal handler (Airflow's on_kill) that interrupts
        # this very thread while it is inside _finish.
        self._state = threading.RLock()
        self._settled = False  # once true, the server may reap the child: its pid is no longer ours
        self.detached = False

    def stream(self, on_line: Callable[[str], None], on_exit: Callable[[], None] | None = None) -> int:
        """Pass the call's output to on_line, line by line, until it has ended; return its exit code.

        `on_exit` runs once the call's process has exited, before its remaining output is
        read: the runner kills what is left in the call's cgroup there, so a process that
        left the call's group cannot hold the output open for the grace period."""
        server = self._server
        with server._io:
            if self.exit_code is None and self._settled:  # given up when the server died or closed
                self._close_output()
                raise ServerGone(server._describe_end())
            lines = OutputLines()
            poller = select.poll()
            if self._output is not None:
                poller.register(self._output, select.POLLIN)
            if self.exit_code is None:
                poller.register(server._sock, select.POLLIN)
            ended_at = None if self.exit_code is None else time.monotonic()
            try:
                while self._output is not None or self.exit_code is None:
                    if self.exit_code is None and (code := server._take(self._id, "exit")) is not None:
                        self._finish(code)
                        if on_exit is not None:
                            on_exit()
                        poller.unregister(server._sock)
                        ended_at = time.monotonic()
                        continue
                    timeout = None if ended_at is None else ended_at + EXIT_GRACE - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        break  # a process outside the call's group holds the pipe open: leave it
                    for fd, _ in poller.poll(None if timeout is None else timeout * 1000):
                        if fd == self._output:
                            chunk = os.read(fd, 1 << 16)
                            if not chunk:
                                poller.unregister(fd)
                                self._close_output()
                            for line in lines.feed(chunk):
                                on_line(line)
                        else:
                            server._receive()
            finally:
                self._close_output()
            for line in lines.flush():
                on_line(line)
            return self.exit_code

    def kill(self) -> None:
        """SIGKILL the call's whole process group; a no-op once the call has been settled."""
        with self._state:
            if self.pid and not self._settled:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    # Not yet its own group (between fork and setsid), so it has no children
                    # yet either: kill it alone (not settled, so the pid is still the call's).
                    with suppress(OSError):
                        os.kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass

    def detach(self) -> None:
        """Leave a durable call running: this process stops following it, and once it has
        gone the server follows it instead (start's `outlive`). Never kills it."""
        with self._state:
            self._settled = self.detached = True
        self._close_output()

    def _finish(self, code: int) -> None:
        with self._state:  # any kill() under way completes before the pid is given up
            self.exit_code = code
            self._settled = True

    def _abandon(self) -> None:
        with self._state:
            self.kill()
            self._settled = True

    def _close_output(self) -> None:
        if self._output is not None:
            os.close(self._output)
            self._output = None


_servers: dict[Path, RuntimeServer] = {}
_servers_lock = threading.Lock()


def server_for(python: Path, env: dict[str, str]) -> RuntimeServer:
    with _servers_lock:
        server = _servers.get(python)
        if server is None or not server.alive:
            if server is not None:
                server.close()  # dead: this only releases its socket and files
            server = _servers[python] = RuntimeServer(python, env)
        return server


def forget(python: Path) -> None:
    with _servers_lock:
        server = _servers.pop(python, None)
    if server is not None:
        server.close()


@atexit.register
def _close_all() -> None:
    for python in list(_servers):
        forget(python)
