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

import json
import os
import pickle
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REF_KEY = "__infra_artifact__"
OUTCOME_FILE = "outcome.json"
PLAIN_TYPES = (str, int, float, bool, type(None))
EXIT_USER_ERROR = 3


def atomic_write(dest: Path, data: bytes) -> None:
    """Write through a temporary file in the same directory, then rename over the target."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _open_ref(uri: str, local: dict[str, str]) -> bytes:
    if uri in local:
        return Path(local[uri]).read_bytes()
    if uri.startswith("file://"):
        return Path(uri[len("file://"):]).read_bytes()
    import fsspec  # only where the image put it: remote stores are read with fsspec

    with fsspec.open(uri, "rb") as fh:
        return fh.read()


def resolve_refs(value: Any, local: dict[str, str]) -> Any:
    if type(value) is dict and isinstance(value.get(REF_KEY), str):
        return pickle.loads(_open_ref(value[REF_KEY], local))
    if type(value) is dict:
        return {k: resolve_refs(v, local) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(resolve_refs(v, local) for v in value)
    return value


def _peak_rss_kib() -> int:
    # VmHWM belongs to this program's own address space. ru_maxrss would not do: Linux keeps
    # it across exec, so it reports the (much larger) parent that forked us.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
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


def _user_traceback(exc: BaseException) -> str:
    tb = exc.__traceback__
    # Drop this runtime's own frames so the user sees their code first.
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _write_outputs(result: Any, call: dict[str, Any], out_dir: Path) -> list[dict[str, Any]]:
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
        try:
            blob = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - any pickling failure is the same user problem
            raise TypeError(f"the return value {key!r} ({type(value).__name__}) cannot be pickled: {exc}") from exc
        name = f"out-{i}.pkl"
        atomic_write(out_dir / name, blob)
        described.append(
            {
                "key": key,
                "file": name,
                "bytes": len(blob),
                "type": f"{type(value).__module__}.{type(value).__qualname__}",
                "plain": is_plain(value) and len(blob) <= int(call.get("xcom_max_bytes", 0)),
            }
        )
    return described


def main(argv: list[str]) -> int:
    started = time.monotonic()
    call_path, out_dir = Path(argv[1]), Path(argv[2])
    local_refs = json.loads(Path(argv[3]).read_text()) if len(argv) > 3 else {}
    outcome: dict[str, Any] = {"ok": False, "python": sys.version.split()[0]}
    try:
        call = pickle.loads(call_path.read_bytes())
        _register_sources(call.get("sources", {}))
        args = resolve_refs(list(call["args"]), local_refs)
        kwargs = resolve_refs(dict(call["kwargs"]), local_refs)
    except Exception as exc:  # noqa: BLE001
        print(f"airflow-infra runtime: could not load the call: {exc!r}", file=sys.stderr)
        outcome["error"] = {"stage": "load", "type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
    else:
        try:
            result = call["fn"](*args, **kwargs)
            outcome["outputs"] = _write_outputs(result, call, out_dir)
            outcome["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail the task too
            text = _user_traceback(exc)
            sys.stderr.write(text)
            outcome["error"] = {"stage": "run", "type": type(exc).__name__, "message": str(exc), "traceback": text}
    sys.stdout.flush()
    sys.stderr.flush()
    outcome["metrics"] = _measure(started)
    atomic_write(out_dir / OUTCOME_FILE, json.dumps(outcome, indent=1).encode())
    return 0 if outcome["ok"] else EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv))
