"""The task runtime: runs one call wherever the task lands (subprocess, container, pod, job).

    python runtime.py CALL_PKL OUT_DIR [REFS_JSON]

It loads the call (function + arguments, pickled with cloudpickle), swaps artifact
references in the arguments for the values they point to, runs the function and writes
each output plus `outcome.json` (ok or error, output descriptions, measured peak memory,
CPU and wall time) into OUT_DIR. The Airflow connections the task declared arrive in the
warm server's request (local target), as JSON on standard input (AIRFLOW_INFRA_CONNECTIONS
=stdin: docker), in a pod's own read-only Secret (=file:PATH: kubernetes) or in a variable
Batch sets from the call's own secret and the runtime unsets at once (=env:NAME: batch),
never in an argument, the store or an image; the function reads them through
airflow_infra.task_connections, which this file provides where the task runs. It must run
where Airflow and airflow-infra are not installed: standard library and cloudpickle only, and no imports of this package.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# Imports are kept to what every call needs (traceback, for one, loads only on failure):
# this file's start-up is part of every task's overhead.

REF_KEY = "__infra_artifact__"
OUTCOME_FILE = "outcome.json"
PLAIN_TYPES = (str, int, float, bool, type(None))
EXIT_USER_ERROR = 3
HASH_MAX_BYTES = 64 << 20
FAN_OUT_KEY = "fan_out"  # in an artifact reference: it names a fan-out's manifest (FanOutResults)
# Set by AWS Batch in an array job's child, and by Kubernetes in an Indexed Job's pod: which
# chunk of a fan-out this process runs. Without them, the runtime runs every chunk itself.
ONE_CHUNK = "AIRFLOW_INFRA_CHUNK"  # a fan-out of one chunk, run as a plain job (Batch has no array of one)
CHUNK_INDEX_VARIABLES = ("AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX", ONE_CHUNK)
CONTROL = "AIRFLOW_INFRA_CONTROL_FD"  # names, in serve mode, the fd of the control socket to the worker
# In serve mode, what a call that outlives its worker leaves in its folder (its cwd) for the
# task's next try (airflow_infra/targets/local/runner.py): its exit, and its output since.
OUTLIVED_EXIT = ".exit.json"
OUTLIVED_OUTPUT = ".output.log"
# How a call that declared connections receives their values: "stdin" (a JSON document the
# worker writes to the call's standard input, then closes: docker), "file:PATH" (a JSON file,
# a Secret mounted read-only: kubernetes) or "env:NAME" (a variable Batch sets from the job
# definition's secret; the runtime unsets it before the call loads: batch). Unset: none, or
# (local target) they came in the server's request. This variable says only where, never a value.
CONNECTIONS = "AIRFLOW_INFRA_CONNECTIONS"
# Where the call's own store credentials are (kubernetes and batch targets with
# store_credentials): "file:PATH" or "env:NAME" as above, a JSON {key, secret, token}. The
# runtime reads and writes the store with them alone; the function's environment never has them.
STORE_CREDENTIALS = "AIRFLOW_INFRA_STORE_CREDENTIALS"
_store_options: dict[str, str] = {}  # fsspec options for the store (the credentials above), once read


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

        return fsspec.open(plain_uri(path), "rb", **_store_options).open()
    return open(path[len("file://"):] if path.startswith("file://") else path, "rb")


@contextmanager
def open_write(path: str) -> Iterator[Any]:
    """Atomic on a local filesystem (temp + rename); a single PUT on an object store."""
    if is_uri(path):
        import fsspec

        with fsspec.open(plain_uri(path), "wb", **_store_options) as fh:
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
    def load(ref: dict[str, Any]) -> Any:
        if ref.get(FAN_OUT_KEY):  # a fan-out's results: a sequence that reads them as they are asked for
            with open_read(local.get(ref[REF_KEY]) or ref[REF_KEY]) as fh:
                return FanOutResults(json.load(fh), lambda uri: _load_ref(uri, local))
        return _load_ref(ref[REF_KEY], local)

    return map_refs(value, load)


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


def _secret_document(variable: str) -> Any:
    """The JSON document the variable `variable` says where to find ("file:PATH", a mounted
    Secret; "env:NAME", a variable Batch set from the job's secret), or None when it is unset.
    Both variables are unset first: the function and the processes it starts never see them."""
    source = os.environ.pop(variable, None)
    if source is None:
        return None
    if source.startswith("file:"):
        with open(source.removeprefix("file:"), "rb") as fh:
            return json.load(fh)
    if source.startswith("env:"):
        text = os.environ.pop(source.removeprefix("env:"), None)
        if text is None:
            raise RuntimeError(f"{variable} names the variable {source[4:]}, which is not set: the job's secrets were not injected")
        return json.loads(text)
    raise RuntimeError(f"{variable} is {source!r}: expected file:PATH or env:NAME")


def _file_sha256(path: str) -> str:
    with open_read(path) as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def main(argv: list[str], connections: dict[str, Any] | None = None) -> int:
    """Run one call. `connections`: the declared connections' values, when the caller has
    them in memory (the warm local server); otherwise CONNECTIONS says where to read them."""
    started = time.monotonic()
    call_path, out_dir = argv[1], argv[2]
    local_refs = {}
    if len(argv) > 3:
        with open(argv[3]) as fh:
            local_refs = json.load(fh)
    outcome: dict[str, Any] = {"ok": False, "python": sys.version.split()[0]}
    try:
        # Before the call is unpickled: a function may name connection() from the DAG's
        # module, which unpickles as a reference to this module's.
        _store_options.update(_secret_document(STORE_CREDENTIALS) or {})  # before the call is read
        if os.environ.get(CONNECTIONS) == "stdin":
            del os.environ[CONNECTIONS]
            if connections is None:
                connections = json.loads(sys.stdin.buffer.read() or b"{}")
                sys.stdin.close()  # read to its end: the function has nothing more to read there
        else:
            from_secret = _secret_document(CONNECTIONS)  # a pod's Secret, a Batch job's secret
            connections = connections if connections is not None else from_secret
        install_connections(connections or {})
        with open_read(call_path) as fh:
            call = pickle.load(fh)
        args = resolve_refs(list(call["args"]), local_refs)
        kwargs = resolve_refs(dict(call["kwargs"]), local_refs)
    except Exception as exc:  # noqa: BLE001
        print(f"airflow-infra runtime: could not load the call: {exc!r}", file=sys.stderr)
        outcome["error"] = {"stage": "load", "type": type(exc).__name__, "message": _message(exc), "traceback": _user_traceback(exc)}
    else:
        _send_log_records_to_stderr(int(call.get("log_level", 20)))
        if call.get("fan_out"):
            told = next((v for v in CHUNK_INDEX_VARIABLES if os.environ.get(v)), None)
            if told is not None:  # one child of an array job or Indexed Job: its chunk's report is its outcome
                run_chunk(call, args, kwargs, local_refs, out_dir, int(os.environ[told]), told)
                return 0
            outcome["fan_out"] = drive_fan_out(call, args, kwargs, local_refs, out_dir)
            outcome["ok"] = True  # the driver ran: which items succeeded is the chunks' reports' to say
        else:
            try:
                result = _invoke(call["fn"], args, kwargs)
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


def _invoke(fn: Any, args: list, kwargs: dict) -> Any:
    result = fn(*args, **kwargs)
    if hasattr(result, "__await__") and hasattr(result, "send"):  # an `async def`: run it, as @task does
        import asyncio

        result = asyncio.run(result)
    return result


# -- fan-out: one function over many items, in chunks (airflow_infra/pipeline/fanout.py) -------
#
# call["fan_out"] = {"argument": name, "chunks": [URI of chunk c's [(index, item), ...]],
# "sizes": [items per chunk], "parallelism": n, "progress_seconds": s}. Chunk c writes
# chunk-{c}.pkl (its results, None where an item failed) and then chunk-{c}.json (per item:
# ok, error, measurements): a report is there only once its results are.


def chunk_files(out_dir: str, chunk: int) -> tuple[str, str]:
    return join(out_dir, f"chunk-{chunk}.pkl"), join(out_dir, f"chunk-{chunk}.json")


def run_chunk(call: dict[str, Any], args: list, kwargs: dict, local_refs: dict[str, str], out_dir: str, chunk: int,
              told: str | None = None) -> None:
    """Run one chunk's items. `told`: the variable the platform named the chunk in (None: a
    pool's child), kept in the report, so that what ran where can be checked."""
    import cloudpickle

    spec = call["fan_out"]
    items = _load_ref(spec["chunks"][chunk], local_refs)
    results, report = [], []
    for index, item in items:
        started, cpu = time.monotonic(), time.process_time()
        entry: dict[str, Any] = {"index": index, "ok": False}
        try:
            results.append(_invoke(call["fn"], args, {**kwargs, spec["argument"]: item}))
            entry["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - the item fails; the chunk goes on
            _register_sources(call.get("sources", {}))
            results.append(None)
            entry["error"] = {"type": type(exc).__name__, "message": _message(exc), "traceback": _user_traceback(exc)}
        entry.update(wall_seconds=round(time.monotonic() - started, 6), cpu_seconds=round(time.process_time() - cpu, 6))
        report.append(entry)
    # Peak memory once per chunk, not per item: the items share the process, and reading it
    # (/proc/self/status) costs more than a small item's whole work.
    peak = _peak_rss_kib() * 1024
    results_file, report_file = chunk_files(out_dir, chunk)
    try:
        with open_write(results_file) as fh:
            cloudpickle.dump(results, fh, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - a result that cannot be pickled fails its chunk's items
        with open_write(results_file) as fh:
            pickle.dump([None] * len(results), fh)
        for entry in report:
            if entry["ok"]:
                entry.update(ok=False, error={"type": type(exc).__name__, "message": f"the results cannot be pickled: {exc}",
                                              "traceback": ""})
    with open_write(report_file) as fh:
        fh.write(json.dumps({"chunk": chunk, "told": told, "peak_memory_bytes": peak, "items": report}).encode())


def drive_fan_out(call: dict[str, Any], args: list, kwargs: dict, local_refs: dict[str, str], out_dir: str) -> dict[str, int]:
    """Run every chunk, `parallelism` at a time, each in a child forked from this process
    (the call's modules are loaded once), and say how far along it is every few seconds:
    one line, not one per item. A child that dies (a signal, the OOM killer) fails its
    chunk's items, saying how."""
    import traceback

    spec = call["fan_out"]
    sizes, pending = spec["sizes"], list(range(len(spec["chunks"])))
    total, every = sum(sizes), float(spec.get("progress_seconds") or 10)
    running: dict[int, int] = {}
    counts = {"items": total, "done": 0, "failed": 0}
    said = time.monotonic()

    def say() -> None:
        running_items = sum(sizes[c] for c in running.values())
        print(f"fan-out: {counts['done']}/{total} items done, {counts['failed']} failed, {running_items} running", flush=True)

    while pending or running:
        while pending and len(running) < max(1, int(spec["parallelism"])):
            chunk = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                code = 70
                try:
                    run_chunk(call, args, kwargs, local_refs, out_dir, chunk)
                    code = 0
                except BaseException:  # noqa: BLE001 - said on the call's output; the driver fails the chunk
                    traceback.print_exc()
                finally:
                    try:
                        sys.stdout.flush()
                        sys.stderr.flush()
                    finally:
                        os._exit(code)
            running[pid] = chunk
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.005)
        else:
            chunk = running.pop(pid)
            report = _chunk_report(out_dir, chunk)
            if report is None:
                report = _chunk_died(call, local_refs, out_dir, chunk, status)
            ok = sum(1 for entry in report if entry["ok"])
            counts["done"] += ok
            counts["failed"] += len(report) - ok
        if time.monotonic() - said >= every:
            say()
            said = time.monotonic()
    say()
    return counts


def _chunk_report(out_dir: str, chunk: int) -> list[dict[str, Any]] | None:
    try:
        with open_read(chunk_files(out_dir, chunk)[1]) as fh:
            return json.load(fh)["items"]
    except (OSError, ValueError, KeyError):
        return None


def _chunk_died(call: dict[str, Any], local_refs: dict[str, str], out_dir: str, chunk: int, status: int) -> list[dict[str, Any]]:
    how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit code {os.waitstatus_to_exitcode(status)}"
    error = {"type": "ChunkDied", "message": f"the process running this item's chunk ({chunk}) died ({how})", "traceback": ""}
    report = [{"index": index, "ok": False, "error": error} for index, _ in _load_ref(call["fan_out"]["chunks"][chunk], local_refs)]
    results_file, report_file = chunk_files(out_dir, chunk)
    with open_write(results_file) as fh:
        pickle.dump([None] * len(report), fh)
    with open_write(report_file) as fh:
        fh.write(json.dumps({"chunk": chunk, "items": report}).encode())
    return report


class FanOutResults:
    """A fan-out's results by item index, as a read-only sequence: what a downstream task
    gets. Each chunk's results are read when one of its items is first asked for, and only
    the last chunk read is kept, so 100,000 results are never all in memory unless the task
    makes a list of them. A failed item (within the fan-out's tolerance) is None; `failed`
    lists their indexes.

    manifest: {"length": n, "chunks": [{"results": URI, "segments": [[first index, last
    index, position of the first in the chunk's results], ...]}], "failed": [index, ...]},
    written by airflow_infra/pipeline/fanout.py."""

    def __init__(self, manifest: dict[str, Any], read: Any):
        import bisect

        self._read, self._length = read, int(manifest["length"])
        self.failed = list(manifest.get("failed") or ())
        # (first index, last index, chunk number, position of `first` in the chunk), by first index
        self._segments = sorted((first, last, number, position) for number, chunk in enumerate(manifest["chunks"])
                                for first, last, position in chunk["segments"])
        self._starts = [segment[0] for segment in self._segments]
        self._bisect = bisect.bisect_right
        self._uris = [chunk["results"] for chunk in manifest["chunks"]]
        self._cached: tuple[int, list] | None = None

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if not isinstance(index, int):
            raise TypeError(f"fan-out results are indexed by int, not {type(index).__name__}")
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"fan-out result index {index} out of range ({self._length} items)")
        at = self._bisect(self._starts, index) - 1
        first, last, number, position = self._segments[at]
        if not first <= index <= last:  # no chunk holds it: the manifest lists every index, so never
            raise IndexError(f"fan-out result {index} is in no chunk")
        if self._cached is None or self._cached[0] != number:
            self._cached = (number, self._read(self._uris[number]))
        return self._cached[1][position + index - first]

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(self._length))

    def __repr__(self) -> str:
        return f"FanOutResults({self._length} items, {len(self.failed)} failed)"

    def __reduce__(self) -> Any:
        return (list, (list(self),))  # passed on by value (pickled into a downstream call, say)


Sequence.register(FanOutResults)


def _send(sock: Any, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _wait_call(sock: Any, pid: int, output: int | None, deadline: float | None, cwd: str) -> tuple[Any, bool, bool]:
    """Wait until the call's child has exited, without reaping it (the worker may still kill
    its group); returns its waitid info, whether the worker went away meanwhile, and
    whether the call was then stopped at its deadline.

    If the worker goes away (EOF on the control socket), end the call: it must not outlive
    its task. Unless it is durable (`output`, the read end of its output pipe, is given):
    then follow it to its end, as the worker would have (_follow_orphan).
    """
    import select
    import socket

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel): just wait
        pidfd = None
    orphaned = timed_out = False
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(sock, select.POLLIN)
        if pidfd not in dict(poller.poll()):  # the socket woke us: EOF, or (unexpected) data
            try:
                gone = sock.recv(1, socket.MSG_PEEK) == b""
            except OSError:  # ECONNRESET: the worker died with replies unread
                gone = True
            poller.unregister(sock)
            if gone and output is not None:
                orphaned = True
                timed_out = _follow_orphan(pid, pidfd, output, deadline, join(cwd, OUTLIVED_OUTPUT))
            else:
                if gone:
                    _killpg(pid)
                poller.poll()  # now the child alone
        os.close(pidfd)
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT), orphaned, timed_out


def _follow_orphan(pid: int, pidfd: int, output: int, deadline: float | None, output_file: str) -> bool:
    """A durable call whose worker has gone: append its output to `output_file` (it would
    die of a broken pipe otherwise) until it has exited and its output has ended (or 2 s
    after its exit, if something outside its group holds the pipe), and stop its group at
    `deadline`, its timeout, which the worker enforced before. Whether it was stopped so."""
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(output, select.POLLIN)
    exited_at = None
    reading, timed_out = True, False
    with open(output_file, "ab") as log:
        while exited_at is None or (reading and time.monotonic() < exited_at + 2.0):
            waits = [deadline - time.time()] if deadline is not None and exited_at is None else []
            if exited_at is not None:
                waits.append(exited_at + 2.0 - time.monotonic())
            ready = dict(poller.poll(max(0, min(waits)) * 1000 if waits else None))
            if output in ready:
                chunk = os.read(output, 1 << 16)
                if chunk:
                    log.write(chunk)
                    log.flush()
                else:
                    reading = False
                    poller.unregister(output)
            if pidfd in ready and exited_at is None:
                exited_at = time.monotonic()
                poller.unregister(pidfd)
                _killpg(pid)  # what it left in its group would hold the output open
            elif exited_at is None and deadline is not None and time.time() >= deadline:
                timed_out = True
                _killpg(pid)
                deadline = None  # its exit comes next
    return timed_out


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, 9)
    except OSError:
        pass


def _join_cgroups(procs_files: list[str]) -> None:
    """Put this forked process into the call's cgroups before it runs anything of the call,
    so that the call's limits hold from its first byte. A call that cannot join does not run."""
    for path in procs_files:
        try:
            with open(path, "w") as fh:
                fh.write(str(os.getpid()))
        except OSError as exc:
            raise RuntimeError(f"could not join the call's cgroup ({path}: {exc.strerror}); the call did not run") from None


def serve() -> int:
    """Warm mode: fork one child per request, so each call skips interpreter start-up.

    The worker talks to this server over a Unix socket whose fd number is in the CONTROL
    environment variable; the call's output never touches it. A request is one JSON line
    {"call": id, "argv": [...], "cwd": ..., "env": {...}, "cgroup": [cgroup.procs paths the
    child joins before anything else]} sent together with one file
    descriptor, the write end of the pipe that is to be the call's stdout and stderr. For
    each, a forked child (its own session and process group) runs `main`; the server
    answers {"call": id, "pid": pid}, then, once the child has exited and its group is
    killed, {"call": id, "exit": code} (negative: killed by that signal). EOF on the
    socket (the worker has gone) ends the server, and any call still running, except a
    durable one: a request with {"outlive": {"timeout": seconds or null}} comes with a
    second descriptor, the read end of the output pipe. If the worker goes away while such a
    call runs, the server keeps it running (to its timeout at most), appends its output to
    OUTLIVED_OUTPUT in the call's folder, writes its exit to OUTLIVED_EXIT there, and only
    then ends: the task's next try follows the call through those files.
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
            outlive = request.get("outlive")
            output = fds.pop(0) if outlive is not None else None  # the pipe's read end, for after the worker
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
                    if output is not None:
                        os.close(output)  # or the call's output never reaches EOF
                    os.setsid()
                    os.dup2(out, 1)
                    os.dup2(out, 2)
                    os.close(out)
                    _join_cgroups(request.get("cgroup") or [])  # before anything of the call runs
                    os.chdir(request["cwd"])
                    os.environ.update(request["env"])
                    # In memory only, from the request: never in the server's environment
                    # or a file (see airflow_infra/targets/local/server.py).
                    code = main(["runtime", *request["argv"]], request.get("connections") or {})
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
            call_id, cwd = request["call"], request["cwd"]
            deadline = time.time() + outlive["timeout"] if outlive and outlive.get("timeout") else None
            del request, line  # they hold the call's connection values: the server keeps no reference
            _send(sock, {"call": call_id, "pid": pid})
            try:
                info, orphaned, timed_out = _wait_call(sock, pid, output, deadline, cwd)
            finally:
                if output is not None:
                    os.close(output)
            _killpg(pid)  # anything the call left running in its group (the zombie leader keeps the pgid reserved)
            signalled = info.si_code != os.CLD_EXITED
            code = -info.si_status if signalled else info.si_status
            if orphaned:
                with atomic_file(join(cwd, OUTLIVED_EXIT), durable=False) as fh:  # read only on this machine
                    fh.write(json.dumps({"exit": code, "timed_out": timed_out}).encode())
                return 0
            _send(sock, {"call": call_id, "exit": code})
            zombie = pid
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the worker went away mid-reply


# -- connections: what a function reads of the Airflow connections its task declared ---------
#
# The public face is airflow_infra.task_connections (the same objects). Where the task runs,
# airflow_infra is not installed: this runtime registers itself as airflow_infra.runtime and
# a module of the public names as airflow_infra.task_connections (_register_task_modules),
# so `from airflow_infra.task_connections import connection`, in the function or at the top
# of the DAG file, works in the task as it does on the worker.

_task_connections: dict[str, TaskConnection] = {}


class TaskConnection:
    """One declared Airflow connection, as the function sees it: plain values, read-only.

    conn_id, conn_type, host, login, password, port, schema, extra (a dict: a fresh copy on
    each read) and get_uri(), as on Airflow's Connection. Its repr leaves out login, password
    and extra, so that printing it does not put a credential in the task log."""

    __slots__ = ("conn_id", "conn_type", "host", "login", "password", "port", "schema", "_extra")

    def __init__(self, conn_id: str, fields: dict[str, Any]):
        port = fields.get("port")
        values = {
            "conn_id": conn_id,
            **{k: _str_or_none(fields.get(k)) for k in ("conn_type", "host", "login", "password", "schema")},
            "port": int(port) if port not in (None, "") else None,
            "_extra": dict(fields.get("extra") or {}),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"connection {self.conn_id!r} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"connection {self.conn_id!r} is read-only")

    @property
    def extra(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._extra))  # a copy: changing it changes nothing here

    @property
    def extra_dejson(self) -> dict[str, Any]:  # Airflow's name, for code moved from @task
        return self.extra

    def get_uri(self) -> str:
        """The connection as a URI, in the form Airflow's Connection.get_uri gives."""
        from urllib.parse import parse_qsl, quote, urlencode

        uri = f"{(self.conn_type or '').lower().replace('_', '-')}://"
        authority = ""
        if self.login is not None:
            authority += quote(self.login, safe="")
        if self.password is not None:
            authority += ":" + quote(self.password, safe="")
        if authority:
            uri += authority + "@"
        host = quote(self.host, safe="") if self.host else ""
        if self.port:
            host += f"@:{self.port}" if not host and not authority else f":{self.port}"
        if self.schema:
            host += f"/{quote(self.schema, safe='')}"
        uri += host
        if self._extra:
            try:
                query = urlencode(self._extra)
            except TypeError:
                query = ""
            if not (query and self._extra == dict(parse_qsl(query, keep_blank_values=True))):
                query = urlencode({"__extra__": json.dumps(self._extra)})
            uri += ("?" if self.schema else "/?") + query
        return uri

    def __repr__(self) -> str:
        return f"TaskConnection(conn_id={self.conn_id!r}, conn_type={self.conn_type!r}, host={self.host!r})"


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def connection(conn_id: str) -> TaskConnection:
    """The declared connection `conn_id` (@infra_task(connections=[...])), inside the task."""
    try:
        return _task_connections[conn_id]
    except KeyError:
        declared = ", ".join(repr(c) for c in _task_connections) or "none"
        raise LookupError(
            f"connection {conn_id!r} is not declared by this task (declared: {declared}); declare it with "
            f"@infra_task(connections=[{conn_id!r}]), and read it inside the task's function"
        ) from None


def aws_environment(fields: dict[str, Any]) -> dict[str, str]:
    """The variables boto3, s3fs and the AWS CLI read, from an `aws` connection's values."""
    extra = fields.get("extra") or {}
    values = {
        "AWS_ACCESS_KEY_ID": fields.get("login") or extra.get("aws_access_key_id"),
        "AWS_SECRET_ACCESS_KEY": fields.get("password") or extra.get("aws_secret_access_key"),
        "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
        "AWS_DEFAULT_REGION": extra.get("region_name"),
        "AWS_ENDPOINT_URL": extra.get("endpoint_url"),
    }
    return {name: str(value) for name, value in values.items() if value}


# conn_type -> the environment variables client libraries read for it.
CONNECTION_ENVIRONMENT = {"aws": aws_environment}


def connection_environment(connections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The variables the declared connections give, in declaration order: the first
    connection of a type sets them (two aws connections cannot both be the default one)."""
    env: dict[str, str] = {}
    for fields in connections.values():
        derive = CONNECTION_ENVIRONMENT.get(str(fields.get("conn_type") or "").lower())
        for name, value in (derive(fields) if derive else {}).items():
            env.setdefault(name, value)
    return env


def install_connections(connections: dict[str, dict[str, Any]]) -> None:
    """Make the declared connections visible to the function: through connection(), and
    through the variables client libraries read. A variable the task's environment already
    has (its declared env=) is kept: what the DAG says explicitly wins."""
    _task_connections.clear()
    _task_connections.update({conn_id: TaskConnection(conn_id, fields) for conn_id, fields in connections.items()})
    # A pod or job with an identity of its own (a service account's role, a Batch job role)
    # reads and writes the artifact store with it: keys in the environment would take
    # precedence over it in boto's chain, so there the connection's keys go through
    # connection() only.
    own_identity = any(name in os.environ for name in _OWN_AWS_IDENTITY)
    for name, value in connection_environment(connections).items():
        if not (own_identity and name in _AWS_KEYS):
            os.environ.setdefault(name, value)


_OWN_AWS_IDENTITY = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
_AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _register_task_modules() -> None:
    """Where the task runs (this file is __main__), answer imports of airflow_infra.runtime
    and airflow_infra.task_connections with this module, since the package is not installed there."""
    import types

    me = sys.modules[__name__]
    public = types.ModuleType("airflow_infra.task_connections", "Declared Airflow connections, inside an infra task.")
    public.connection, public.TaskConnection = connection, TaskConnection
    public.__all__ = ["TaskConnection", "connection"]
    package = types.ModuleType("airflow_infra", "What of airflow-infra exists where a task runs.")
    package.__path__ = []  # a package, so that its submodules can be imported; it has only these two
    package.runtime, package.task_connections = me, public
    for name, module in (("airflow_infra", package), ("airflow_infra.runtime", me), ("airflow_infra.task_connections", public)):
        sys.modules.setdefault(name, module)


if __name__ == "__main__":
    _register_task_modules()
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv))
