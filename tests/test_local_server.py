"""The local target's warm runtime server on its own: real server process, real forked calls.

Each call is a tiny pickled function run by runtime.main in a child of the server. Every
stream runs in a thread joined with a timeout, so a hang fails the test instead of the run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_infra.codeship import dumps_call
from airflow_infra.targets.local import server as server_module
from airflow_infra.targets.local.server import EXIT_GRACE, RunningCall, RuntimeServer, ServerGone, forget, server_for
from airflow_infra.targets.output import MAX_LINE

PYTHON = Path(sys.executable)
OLD_CONTROL = "\x1eairflow-infra\x1e "


@pytest.fixture
def server():
    srv = RuntimeServer(PYTHON, dict(os.environ))
    yield srv
    srv.close()


def start(srv: RuntimeServer, tmp_path: Path, fn: Callable) -> RunningCall:
    folder = tmp_path / f"call-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "call.pkl").write_bytes(dumps_call(fn, [], {}, roots=[], xcom_max_bytes=1024)[0])
    return srv.start([str(folder / "call.pkl"), str(folder / "out")], folder, {"CALL_VAR": "set"})


class Streaming:
    """call.stream in a thread, with its lines collected and a way to wait for one."""

    def __init__(self, call: RunningCall):
        self.call, self.lines, self.result = call, [], {}
        self._new_line = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result["code"] = self.call.stream(self._on_line)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.result["error"] = exc

    def _on_line(self, line: str) -> None:
        with self._new_line:
            self.lines.append(line)
            self._new_line.notify_all()

    def line_starting(self, prefix: str, timeout: float = 20) -> str:
        with self._new_line:
            assert self._new_line.wait_for(lambda: any(l.startswith(prefix) for l in self.lines), timeout), self.lines
            return next(l for l in self.lines if l.startswith(prefix))

    def join(self, timeout: float = 30) -> dict:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.call.kill()
            pytest.fail(f"stream did not return within {timeout}s")
        return self.result


def run(srv: RuntimeServer, tmp_path: Path, fn: Callable) -> tuple[int, list[str]]:
    streaming = Streaming(start(srv, tmp_path, fn))
    result = streaming.join()
    assert "error" not in result, result
    return result["code"], streaming.lines


def gone(pid: int, within: float = 5) -> bool:
    """The process has ended (a zombie counts: this container's init may not reap orphans)."""
    until = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > until:
            return False
        time.sleep(0.05)


def test_output_without_trailing_newline(server, tmp_path):
    began = time.monotonic()
    code, lines = run(server, tmp_path, lambda: sys.stdout.write("50%...100%"))
    assert code == 0 and lines == ["50%...100%"]
    assert time.monotonic() - began < EXIT_GRACE  # ended by EOF on the output, not by the last resort
    # The call sees its own env, and has no way to the server's control socket.
    def sockets():
        fds = os.listdir("/proc/self/fd")
        print(os.environ["CALL_VAR"], "AIRFLOW_INFRA_CONTROL_FD" in os.environ)
        print([fd for fd in fds if os.path.exists(f"/proc/self/fd/{fd}") and "socket:" in os.readlink(f"/proc/self/fd/{fd}")])

    code, lines = run(server, tmp_path, sockets)
    assert code == 0 and lines == ["set False", "[]"]


def test_megabytes_without_newline_stream_in_bounded_lines(server, tmp_path):
    def blob():
        sys.stdout.write("x" * (5 << 20))
        sys.stdout.flush()

    code, lines = run(server, tmp_path, blob)
    assert code == 0
    assert sum(map(len, lines)) == 5 << 20 and max(map(len, lines)) <= MAX_LINE and len(lines) == (5 << 20) // MAX_LINE


def test_output_that_looks_like_control_messages_is_just_output(server, tmp_path):
    def impostor():
        for call in range(1, 6):
            print(f'{OLD_CONTROL}pid 1\n{OLD_CONTROL}exit 0\n{{"call": {call}, "pid": 1}}\n{{"call": {call}, "exit": 0}}')
        sys.stdout.buffer.write(b"\xff\xfe\x00binary\x1e")
        sys.stdout.flush()
        os._exit(9)

    code, lines = run(server, tmp_path, impostor)
    assert code == 9
    assert lines[:4] == [f"{OLD_CONTROL}pid 1", f"{OLD_CONTROL}exit 0", '{"call": 1, "pid": 1}', '{"call": 1, "exit": 0}']
    assert len(lines) == 21 and lines[-1] == "\ufffd\ufffd\x00binary\x1e"
    # And the server is still in step.
    assert run(server, tmp_path, lambda: print("after")) == (0, ["after"])


def sleeper_with_grandchild(new_session: bool = False) -> Callable:
    def call():
        import subprocess

        child = subprocess.Popen(["sleep", "60"], start_new_session=new_session)
        print(f"pids {os.getpid()} {child.pid}", flush=True)
        time.sleep(60)

    return call


def test_kill_ends_the_whole_group(server, tmp_path):
    streaming = Streaming(start(server, tmp_path, sleeper_with_grandchild()))
    pids = [int(p) for p in streaming.line_starting("pids ").split()[1:]]
    assert pids[0] == streaming.call.pid
    streaming.call.kill()
    result = streaming.join(10)
    assert result == {"code": -signal.SIGKILL}
    assert all(gone(pid) for pid in pids)
    streaming.call.kill()  # after the end: a no-op, not an error


def test_after_a_kill_the_next_call_gets_its_own_messages(server, tmp_path):
    first = Streaming(start(server, tmp_path, sleeper_with_grandchild()))
    first.line_starting("pids ")
    first.call.kill()
    assert first.join(10) == {"code": -signal.SIGKILL}
    # Killed before anyone streams it (often before the child is its own group), then streamed.
    for _ in range(20):
        second = start(server, tmp_path, lambda: time.sleep(60))
        second.kill()
        second.kill()
        assert Streaming(second).join(10) == {"code": -signal.SIGKILL}
    # Started, never streamed (a task unwinding): the next start ends it and stays in step.
    abandoned = start(server, tmp_path, sleeper_with_grandchild())
    began = time.monotonic()
    assert run(server, tmp_path, lambda: print("third")) == (0, ["third"])
    assert time.monotonic() - began < 10 and gone(abandoned.pid)  # killed, not waited for
    assert run(server, tmp_path, lambda: os._exit(5)) == (5, [])


def test_exit_codes_and_signals(server, tmp_path):
    assert run(server, tmp_path, lambda: os._exit(7)) == (7, [])
    assert run(server, tmp_path, lambda: os.kill(os.getpid(), signal.SIGTERM))[0] == -signal.SIGTERM
    code, lines = run(server, tmp_path, lambda: 1 / 0)
    assert code == 3 and lines[-1] == "ZeroDivisionError: division by zero"


def test_server_killed_mid_call(tmp_path):
    srv = server_for(PYTHON, dict(os.environ))
    try:
        streaming = Streaming(start(srv, tmp_path, sleeper_with_grandchild()))
        pids = [int(p) for p in streaming.line_starting("pids ").split()[1:]]
        began = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGKILL)
        result = streaming.join(10)
        assert isinstance(result.get("error"), ServerGone), result
        assert time.monotonic() - began < 5 and "exit code -9" in str(result["error"])
        assert all(gone(pid) for pid in pids)
        assert not srv.alive
        with pytest.raises(ServerGone):
            srv.start(["x", "y"], tmp_path, {})
        fresh = server_for(PYTHON, dict(os.environ))
        assert fresh is not srv and fresh.alive
        assert run(fresh, tmp_path, lambda: print("fresh")) == (0, ["fresh"])
    finally:
        forget(PYTHON)
    assert PYTHON not in server_module._servers


@pytest.mark.parametrize("new_session", [False, True], ids=["in-group", "own-session"])
def test_grandchild_holding_the_output_open_does_not_hang(server, tmp_path, new_session):
    def leaves_a_child():
        import subprocess

        child = subprocess.Popen(["sleep", "60"], start_new_session=new_session)
        print(f"pids {child.pid}", flush=True)

    began = time.monotonic()
    code, lines = run(server, tmp_path, leaves_a_child)
    elapsed = time.monotonic() - began
    grandchild = int(lines[0].split()[1])
    try:
        assert code == 0
        if new_session:  # out of the call's group: reading stops a grace period after the exit
            assert elapsed < EXIT_GRACE + 5 and not gone(grandchild, within=0)
        else:  # in the group: the server killed it, which closed the pipe
            assert gone(grandchild)
    finally:
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- a durable call outlives its worker: the server follows it (runtime.serve) ---------------

_WORKER = """
import os, sys
from pathlib import Path
from airflow_infra.codeship import dumps_call
from airflow_infra.targets.local.server import RuntimeServer

def fn():
    import time
    for i in range(8):
        print(f"line {i}", flush=True)
        time.sleep(0.4)
    return 42

folder, timeout = Path(sys.argv[1]), float(sys.argv[2]) or None
(folder / "call.pkl").write_bytes(dumps_call(fn, [], {}, roots=[], xcom_max_bytes=1024)[0])
server = RuntimeServer(Path(sys.executable), dict(os.environ))
call = server.start([str(folder / "call.pkl"), str(folder / "out")], folder, {}, outlive={"timeout": timeout})
print("pids", call.pid, server.proc.pid, flush=True)
call.stream(lambda line: print("seen", line, flush=True))
"""


def _orphan(tmp_path: Path, timeout: float) -> tuple[Path, int, int, list[str]]:
    """A worker process starts a durable call and is killed with SIGKILL after its second line."""
    import subprocess

    folder = tmp_path / "call"
    folder.mkdir()
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(folder), str(timeout)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    seen = []
    try:
        while len(seen) < 2:
            line = worker.stdout.readline()
            assert line, "the worker ended early"
            if line.startswith("pids"):
                call_pid, server_pid = map(int, line.split()[1:])
            else:
                seen.append(line.split(" ", 1)[1].strip())
        worker.kill()
    finally:
        worker.wait(10)
    return folder, call_pid, server_pid, seen


def _ended(folder: Path, within: float = 20) -> dict:
    import json

    until = time.monotonic() + within
    while not (folder / ".exit.json").exists():
        assert time.monotonic() < until, "the server wrote no exit"
        time.sleep(0.1)
    return json.loads((folder / ".exit.json").read_text())


def _gone(pid: int) -> bool:
    until = time.monotonic() + 10
    while time.monotonic() < until:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        time.sleep(0.05)
    return False


def test_a_durable_call_runs_on_when_its_worker_is_killed_and_its_output_and_exit_are_kept(tmp_path):
    import json

    folder, call_pid, server_pid, seen = _orphan(tmp_path, timeout=0)
    assert _ended(folder) == {"exit": 0, "timed_out": False}
    kept = (folder / ".output.log").read_text().splitlines()
    # Everything written after the worker died is kept, to the last line (what the worker
    # read but had not passed on when it was killed is its loss alone).
    assert seen == ["line 0", "line 1"] and 4 <= len(kept) <= 6, (seen, kept)
    assert kept == [f"line {i}" for i in range(8 - len(kept), 8)], kept
    assert json.loads((folder / "out" / "outcome.json").read_text())["ok"] is True
    assert _gone(server_pid) and _gone(call_pid)  # the server ends with the call it followed


def test_a_durable_call_whose_worker_died_still_ends_at_its_timeout(tmp_path):
    folder, call_pid, server_pid, _ = _orphan(tmp_path, timeout=1.5)
    assert _ended(folder) == {"exit": -signal.SIGKILL, "timed_out": True}
    assert not (folder / "out" / "outcome.json").exists()
    assert _gone(server_pid) and _gone(call_pid)
