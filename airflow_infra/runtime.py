"""The task runtime: runs one call wherever the task lands (subprocess, container, pod, job).

    python runtime.py CALL_PKL OUT_DIR [REFS_JSON]

It loads the call (function + arguments, pickled with cloudpickle), swaps artifact
references in the arguments for the values they point to, runs the function and writes
each output plus `outcome.json` (ok or error, output descriptions, measured peak memory,
CPU and wall time) into OUT_DIR. It must run where Airflow and airflow-infra are not
installed: standard library and cloudpickle only, and no imports of this package.
The rest of the package imports the wire format (REF_KEY, file names, atomic_write) from
here, so both sides always agree.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Imports are kept to what every call needs (traceback, for one, loads only on failure):
# this file's start-up is part of every task's overhead.

REF_KEY = "__infra_artifact__"
OUTCOME_FILE = "outcome.json"
PLAIN_TYPES = (str, int, float, bool, type(None))
EXIT_USER_ERROR = 3
HASH_MAX_BYTES = 64 << 20
CONTROL = "AIRFLOW_INFRA_CONTROL_FD"  # names, in serve mode, the fd of the control socket to the worker


@contextmanager
def atomic_file(dest: str | os.PathLike, *, durable: bool = True) -> Iterator[Any]:
    """A file to write into; on success it replaces `dest` at once, on failure it vanishes.

    With `durable` the data is fsynced before the rename, so that after a crash of the
    machine the file is whole or absent. durable=False is for files nobody reads once this
    machine has crashed (a call's own inputs and handle on a local store, a scratch copy):
    an fsync costs a journal commit, a millisecond or more, on every call of every task.
    """
    dest = os.fspath(dest)
    folder, name = os.path.split(dest)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:  # the folder is made only when missing: makedirs asks about every level
        os.makedirs(folder or ".", exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def plain_uri(uri: str) -> str:
    """Drop an Airflow connection id (s3://aws_default@bucket/key -> s3://bucket/key): fsspec has no connections."""
    scheme, _, rest = uri.partition("://")
    head, slash, tail = rest.partition("/")
    return f"{scheme}://{head.rpartition('@')[2]}{slash}{tail}"


def open_read(path: str) -> Any:
    """A readable binary file: a local path, file:// URI, or (where fsspec is installed) a remote URI."""
    if is_uri(path):
        import fsspec  # images for remote stores carry it

        return fsspec.open(plain_uri(path), "rb").open()
    return open(path[len("file://"):] if path.startswith("file://") else path, "rb")


@contextmanager
def open_write(path: str) -> Iterator[Any]:
    """Atomic on a local filesystem (temp + rename); a single PUT on an object store."""
    if is_uri(path):
        import fsspec

        with fsspec.open(plain_uri(path), "wb") as fh:
            yield fh
    else:
        with atomic_file(path) as fh:
            yield fh


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if is_uri(base) else os.path.join(base, name)


def atomic_write(dest: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write through a temporary file in the same directory, then rename over the target."""
    with atomic_file(dest, durable=durable) as fh:
        fh.write(data)


def is_plain(value: Any, depth: int = 0) -> bool:
    """Made only of JSON-like builtins, so any Python can load it without this task's packages."""
    if depth > 32:
        return False
    if type(value) in PLAIN_TYPES:
        return True
    if type(value) in (list, tuple):
        return all(is_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and is_plain(v, depth + 1) for k, v in value.items())
    return False


def _load_ref(uri: str, local: dict[str, str]) -> Any:
    # Unpickled straight from the file: a large value is read once, not read then copied.
    with open_read(local.get(uri) or uri) as fh:
        return pickle.load(fh)


def map_refs(value: Any, replace: Any) -> Any:
    """`value` with every artifact reference inside its lists, tuples and dicts replaced by
    replace(ref). The one walk over values that looks for references: the worker (finding,
    hashing, loading them) and this runtime use it alike."""
    if type(value) is dict and isinstance(value.get(REF_KEY), str):
        return replace(value)
    if type(value) is dict:
        return {k: map_refs(v, replace) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(map_refs(v, replace) for v in value)
    return value


def resolve_refs(value: Any, local: dict[str, str]) -> Any:
    return map_refs(value, lambda ref: _load_ref(ref[REF_KEY], local))


def _peak_rss_kib() -> int:
    # VmHWM belongs to this program's own address space. ru_maxrss would not do: Linux keeps
    # it across exec, so it reports the (much larger) parent that forked us.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _measure(started: float) -> dict[str, Any]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # Values are KiB on Linux; the children's figure is the largest single child's.
    return {
        "wall_seconds": round(time.monotonic() - started, 6),
        "cpu_seconds": round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 6),
        "peak_memory_bytes": max(_peak_rss_kib(), kids.ru_maxrss) * 1024,
    }


def _register_sources(sources: dict[str, str]) -> None:
    """Let tracebacks show the user's source lines even where their files do not exist."""
    import linecache

    for filename, text in sources.items():
        if not os.path.exists(filename):
            linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)


def _message(exc: BaseException) -> str:
    """The exception's message, with a hint where the cause is the place the function runs."""
    message = str(exc)
    if isinstance(exc, ImportError) and (getattr(exc, "name", None) or "").split(".")[0] == "airflow":
        message += (
            " (Airflow is not installed where the function runs, so get_current_context() and other Airflow"
            " imports are not available: declare the context values it needs as parameters instead, e.g."
            " params, run_id, ds, logical_date, ts, try_number, map_index)"
        )
    return message


# A log record from the function, one line each: LOG_MARK, its level and logger name, the text.
# The worker turns such lines into task-log records of that level (local, docker); on pods and
# jobs they reach the task log through the provider's log stream with level and name in the text.
LOG_MARK = "\x1f"


def _send_log_records_to_stderr(level: int) -> None:
    """What `logging` in the function writes goes to stderr, marked with its level and logger,
    so it reaches the task log as it would from @task (where Airflow's handlers catch it)."""
    import logging

    class MarkedLines(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            head = f"{LOG_MARK}{record.levelname} {record.name}: "
            return "\n".join(head + line for line in (super().format(record).splitlines() or [""]))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MarkedLines("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _user_traceback(exc: BaseException) -> str:
    import traceback

    tb = exc.__traceback__
    # Drop this runtime's own frames so the user sees their code first.
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _write_outputs(result: Any, call: dict[str, Any], out_dir: str) -> list[dict[str, Any]]:
    if call.get("multiple_outputs"):
        if not isinstance(result, dict) or not all(isinstance(k, str) for k in result):
            raise TypeError(
                f"multiple_outputs=True needs the function to return a dict with str keys, got {type(result).__name__}"
            )
        items = list(result.items())
    else:
        items = [("return_value", result)]
    import cloudpickle

    described = []
    for i, (key, value) in enumerate(items):
        name = f"out-{i}.pkl"
        path = join(out_dir, name)
        try:
            # Pickled straight into the file: a large value is never copied into memory first.
            with open_write(path) as fh:
                cloudpickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
                size = fh.tell()
        except OSError as exc:  # the store, not the value
            if exc.errno == errno.ENOSPC:
                raise OSError(exc.errno, f"no space left on the artifact store while writing the return value {key!r} to {path}") from None
            raise
        except Exception as exc:  # noqa: BLE001 - any pickling failure is the same user problem
            raise TypeError(f"the return value {key!r} ({type(value).__name__}) cannot be pickled: {exc}") from exc
        described.append(
            {
                "key": key,
                "file": name,
                "bytes": size,
                # Content hash for result caching downstream; skipped for large blobs, where
                # hashing would cost as much as moving them (those are identified by URI).
                "sha256": _file_sha256(path) if size <= HASH_MAX_BYTES else None,
                "type": f"{type(value).__module__}.{type(value).__qualname__}",
                "plain": is_plain(value) and size <= int(call.get("xcom_max_bytes", 0)),
            }
        )
    return described


def _file_sha256(path: str) -> str:
    with open_read(path) as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def main(argv: list[str]) -> int:
    started = time.monotonic()
    call_path, out_dir = argv[1], argv[2]
    local_refs = {}
    if len(argv) > 3:
        with open(argv[3]) as fh:
            local_refs = json.load(fh)
    outcome: dict[str, Any] = {"ok": False, "python": sys.version.split()[0]}
    try:
        with open_read(call_path) as fh:
            call = pickle.load(fh)
        args = resolve_refs(list(call["args"]), local_refs)
        kwargs = resolve_refs(dict(call["kwargs"]), local_refs)
    except Exception as exc:  # noqa: BLE001
        print(f"airflow-infra runtime: could not load the call: {exc!r}", file=sys.stderr)
        outcome["error"] = {"stage": "load", "type": type(exc).__name__, "message": _message(exc), "traceback": _user_traceback(exc)}
    else:
        _send_log_records_to_stderr(int(call.get("log_level", 20)))
        try:
            result = call["fn"](*args, **kwargs)
            if hasattr(result, "__await__") and hasattr(result, "send"):  # an `async def`: run it, as @task does
                import asyncio

                result = asyncio.run(result)
            outcome["outputs"] = _write_outputs(result, call, out_dir)
            outcome["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail the task too
            _register_sources(call.get("sources", {}))
            text = _user_traceback(exc)
            sys.stderr.write(text)
            outcome["error"] = {"stage": "run", "type": type(exc).__name__, "message": _message(exc), "traceback": text}
    sys.stdout.flush()
    sys.stderr.flush()
    outcome["metrics"] = _measure(started)
    with open_write(join(out_dir, OUTCOME_FILE)) as fh:
        fh.write(json.dumps(outcome, indent=1).encode())
    return 0 if outcome["ok"] else EXIT_USER_ERROR


def _send(sock: Any, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _wait_call(sock: Any, pid: int) -> Any:
    """Wait until the call's child has exited, without reaping it (the worker may still kill its group).

    If the worker goes away meanwhile (EOF on the control socket), end the call: it must
    not outlive its task.
    """
    import select
    import socket

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel): just wait
        pidfd = None
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(sock, select.POLLIN)
        if pidfd not in dict(poller.poll()):  # the socket woke us: EOF, or (unexpected) data
            try:
                gone = sock.recv(1, socket.MSG_PEEK) == b""
            except OSError:  # ECONNRESET: the worker died with replies unread
                gone = True
            if gone:
                _killpg(pid)
            poller.unregister(sock)
            poller.poll()  # now the child alone
        os.close(pidfd)
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, 9)
    except OSError:
        pass


def serve() -> int:
    """Warm mode: fork one child per request, so each call skips interpreter start-up.

    The worker talks to this server over a Unix socket whose fd number is in the CONTROL
    environment variable; the call's output never touches it. A request is one JSON line
    {"call": id, "argv": [...], "cwd": ..., "env": {...}} sent together with one file
    descriptor, the write end of the pipe that is to be the call's stdout and stderr. For
    each, a forked child (its own session and process group) runs `main`; the server
    answers {"call": id, "pid": pid}, then, once the child has exited and its group is
    killed, {"call": id, "exit": code} (negative: killed by that signal). EOF on the
    socket (the worker has gone) ends the server, and any call still running.
    """
    import socket

    import logging  # noqa: F401  (every call sets up logging: inherited loaded, like cloudpickle)

    import cloudpickle  # noqa: F401  (the point of serving: every child inherits it loaded)

    sock = socket.socket(fileno=int(os.environ.pop(CONTROL)))  # popped: calls must not see it
    os.set_inheritable(sock.fileno(), False)
    buffer, fds, zombie = b"", [], None
    try:
        while True:
            while b"\n" not in buffer:
                data, new_fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
                fds += new_fds
                if not data:
                    return 0
                buffer += data
            line, _, buffer = buffer.partition(b"\n")
            request = json.loads(line)
            out = fds.pop(0)
            if zombie is not None:
                # Reaped only now: the worker has finished with the previous call (it sends
                # a request only then), so its kill can no longer hit a reused pid.
                os.waitpid(zombie, 0)
                zombie = None
            pid = os.fork()
            if pid == 0:
                code = 70
                try:
                    sock.close()  # the call must not be able to write control messages
                    os.setsid()
                    os.dup2(out, 1)
                    os.dup2(out, 2)
                    os.close(out)
                    os.chdir(request["cwd"])
                    os.environ.update(request["env"])
                    code = main(["runtime", *request["argv"]])
                except BaseException:  # noqa: BLE001 - reported on the call's own output
                    import traceback

                    traceback.print_exc()
                finally:
                    try:
                        sys.stdout.flush()
                        sys.stderr.flush()
                    finally:  # never fall back into the server's loop
                        os._exit(code)
            os.close(out)  # the child's copy is the only writer: EOF reaches the worker when the call ends
            _send(sock, {"call": request["call"], "pid": pid})
            info = _wait_call(sock, pid)
            _killpg(pid)  # anything the call left running in its group (the zombie leader keeps the pgid reserved)
            signalled = info.si_code != os.CLD_EXITED
            _send(sock, {"call": request["call"], "exit": -info.si_status if signalled else info.si_status})
            zombie = pid
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the worker went away mid-reply


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv))
