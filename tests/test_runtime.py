"""The runtime on its own: call in, outputs and outcome out, with the real subprocess."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from airflow_infra import runtime
from airflow_infra.artifacts import CACHE_DIR, find_refs, make_ref, path_component
from airflow_infra.codeship import dumps_call, loads_plain
from airflow_infra.runtime import atomic_write


def run_call(tmp_path: Path, fn, *args, refs_map=None, **options) -> tuple[dict, Path, subprocess.CompletedProcess]:
    call = tmp_path / "call.pkl"
    call.write_bytes(dumps_call(fn, list(args), {}, roots=[], xcom_max_bytes=1024, **options)[0])
    out = tmp_path / "out"
    cmd = [sys.executable, "-P", runtime.__file__, str(call), str(out)]
    if refs_map is not None:
        (tmp_path / "refs.json").write_text(json.dumps(refs_map))
        cmd.append(str(tmp_path / "refs.json"))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return json.loads((out / "outcome.json").read_text()), out, proc


def test_plain_result_and_metrics(tmp_path):
    outcome, out, proc = run_call(tmp_path, lambda a, b: {"sum": a + b, "pair": (a, b)}, 2, 3)
    assert proc.returncode == 0 and outcome["ok"]
    [output] = outcome["outputs"]
    assert output["plain"] is True and output["key"] == "return_value"
    assert loads_plain((out / output["file"]).read_bytes()) == {"sum": 5, "pair": (2, 3)}
    metrics = outcome["metrics"]
    # Peak memory is the runtime's own (tens of MiB), not the parent's that forked it.
    assert 1 << 20 < metrics["peak_memory_bytes"] < 200 << 20
    assert metrics["wall_seconds"] >= 0 and metrics["cpu_seconds"] > 0


def test_large_or_rich_results_are_not_plain(tmp_path):
    outcome, out, _ = run_call(tmp_path, lambda: "x" * 5000)
    assert outcome["outputs"][0]["plain"] is False  # above xcom_max_bytes
    outcome, out, _ = run_call(tmp_path, lambda: Counter("abca"))
    assert outcome["outputs"][0]["plain"] is False
    with pytest.raises(pickle.UnpicklingError):  # the worker never unpickles arbitrary objects
        loads_plain((out / "out-0.pkl").read_bytes())


def test_multiple_outputs(tmp_path):
    outcome, out, _ = run_call(tmp_path, lambda: {"a": 1, "b": [2]}, multiple_outputs=True)
    assert [(o["key"], o["file"]) for o in outcome["outputs"]] == [("a", "out-0.pkl"), ("b", "out-1.pkl")]
    outcome, _, proc = run_call(tmp_path, lambda: [1], multiple_outputs=True)
    assert not outcome["ok"] and "multiple_outputs=True needs" in outcome["error"]["message"]
    assert proc.returncode == runtime.EXIT_USER_ERROR


def test_exception_is_reported_with_traceback(tmp_path):
    def fails():
        raise KeyError("missing-thing")

    outcome, _, proc = run_call(tmp_path, fails)
    assert proc.returncode == runtime.EXIT_USER_ERROR
    assert outcome["error"]["type"] == "KeyError"
    assert "in fails" in outcome["error"]["traceback"] and "missing-thing" in proc.stderr
    assert "test_runtime.py" in outcome["error"]["traceback"]


def test_refs_are_loaded_inside_the_runtime(tmp_path):
    stored = tmp_path / "stored.pkl"
    stored.write_bytes(pickle.dumps(Counter("hello")))
    remote = tmp_path / "remote-copy.pkl"
    remote.write_bytes(pickle.dumps([1, 2, 3]))
    refs = [make_ref(f"file://{stored}", "collections.Counter", 10), make_ref("s3://bucket/x.pkl", "list", 5)]
    assert find_refs({"a": [refs[0]], "b": (refs[1],)}) == [f"file://{stored}", "s3://bucket/x.pkl"]
    outcome, out, _ = run_call(
        tmp_path, lambda parts: (type(parts[0]).__name__, parts[0]["l"], parts[1]), refs, refs_map={"s3://bucket/x.pkl": str(remote)}
    )
    assert outcome["ok"], outcome
    assert loads_plain((out / "out-0.pkl").read_bytes()) == ("Counter", 2, [1, 2, 3])


def test_atomic_write_never_shows_a_partial_file(tmp_path):
    target = tmp_path / "value.bin"
    versions = [bytes([i]) * (1 << 20) for i in range(1, 6)]
    atomic_write(target, versions[0])
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            data = target.read_bytes()
            seen.add((len(data), data[:1] * len(data) == data))

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(10):
        for version in versions:
            atomic_write(target, version)
    stop.set()
    reader.join()
    assert seen == {(1 << 20, True)}
    assert [p.name for p in tmp_path.iterdir()] == ["value.bin"]  # no temporary files left behind


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "value.bin"
    atomic_write(target, b"old")

    def broken_replace(*_):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["value.bin"]


def test_path_components_are_safe_and_distinct():
    a, b = path_component("manual__2026-01-01T00:00:00+00:00"), path_component("manual__2026-01-01T00_00_00_00_00")
    assert "/" not in a and ":" not in a and a != b
    assert path_component("../x") != ".." and "/" not in path_component("../x")
    assert path_component("plain_id-1.2") == "plain_id-1.2"


def test_path_components_are_injective_and_never_name_the_stores_own_folders():
    hostile = [
        "", ".", "..", "...", "~", "~7e", "~2e", "~~", "run:a", "run_a", "run~3aa", "run_a-0c1d2e3f",
        "_cache", CACHE_DIR, "a/b", "a\\b", "a\nb", "a\x00b", "é", "e\u0301", "\ud800", " ", "x" * 300,
        "x" * 299 + "y", "x" * 134 + "~~", "manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00~3a00~3a00~2b00~3a00",
    ]
    out = [path_component(value) for value in hostile]
    assert len(set(out)) == len(hostile), [(v[:12], o[:40]) for v, o in zip(hostile, out) if out.count(o) > 1]
    for value, name in zip(hostile, out):
        assert re.match(r"[A-Za-z0-9._~-]{1,255}\Z", name), (value, name)
        assert name not in (".", "..", CACHE_DIR), value


@pytest.mark.parametrize("channel", ["file", "env"])
def test_store_credentials_reach_the_runtime_and_never_the_function(tmp_path, channel):
    """A pod's Secret file or a Batch job's injected variable: read, and unset, before the call loads."""
    import os

    document = json.dumps({"key": "ASIAKEY", "secret": "s3cret", "token": "t0ken"})
    if channel == "file":
        (tmp_path / "store.json").write_text(document)
        env = {runtime.STORE_CREDENTIALS: f"file:{tmp_path / 'store.json'}"}
    else:
        env = {runtime.STORE_CREDENTIALS: "env:INJECTED_STORE", "INJECTED_STORE": document}

    def look():
        import os

        from airflow_infra import runtime as inside

        return {"options": dict(inside._store_options), "seen": sorted(k for k in os.environ if "STORE" in k)}

    call = tmp_path / "call.pkl"
    call.write_bytes(dumps_call(look, [], {}, roots=[], xcom_max_bytes=1024)[0])
    proc = subprocess.run([sys.executable, "-P", runtime.__file__, str(call), str(tmp_path / "out")],
                          capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    result = loads_plain((tmp_path / "out" / "out-0.pkl").read_bytes())
    assert result == {"options": {"key": "ASIAKEY", "secret": "s3cret", "token": "t0ken"}, "seen": []}
    assert "s3cret" not in proc.stdout + proc.stderr


def test_store_credentials_the_job_never_got_fail_the_call_saying_so(tmp_path):
    import os

    call = tmp_path / "call.pkl"
    call.write_bytes(dumps_call(lambda: 1, [], {}, roots=[], xcom_max_bytes=1024)[0])
    proc = subprocess.run([sys.executable, "-P", runtime.__file__, str(call), str(tmp_path / "out")], capture_output=True,
                          text=True, env={**os.environ, runtime.STORE_CREDENTIALS: "env:NOT_INJECTED"})
    assert proc.returncode != 0
    outcome = json.loads((tmp_path / "out" / "outcome.json").read_text())
    assert not outcome["ok"] and outcome["error"]["stage"] == "load"
    assert "AIRFLOW_INFRA_STORE_CREDENTIALS names the variable NOT_INJECTED, which is not set" in outcome["error"]["message"]
